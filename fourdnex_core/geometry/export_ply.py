"""Binary PLY point clouds: one file per frame, float32 x y z and uint8 red green blue.

Points keep the scene's axes (OpenCV: x right, y down, z forward). The writer streams the
points in chunks, so a frame costs at most ``chunk_points`` x 15 bytes beyond the cloud itself.
The reader accepts any binary PLY whose vertex element has numeric x, y, z and uchar red,
green, blue properties (other properties and later elements are skipped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fourdnex_core.atomic_write import atomic_path
from fourdnex_core.geometry.pointcloud import PointCloud

VERTEX_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                         ("red", "u1"), ("green", "u1"), ("blue", "u1")])

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_MAX_HEADER_BYTES = 1 << 16


def ply_header(num_points: int) -> bytes:
    """The header of a PLY file holding ``num_points`` vertices in :data:`VERTEX_DTYPE`."""
    lines = ["ply", "format binary_little_endian 1.0",
             "comment fourdnex_core point cloud, OpenCV axes (x right, y down, z forward)",
             f"element vertex {num_points}",
             "property float x", "property float y", "property float z",
             "property uchar red", "property uchar green", "property uchar blue",
             "end_header"]
    return ("\n".join(lines) + "\n").encode("ascii")


def write_ply(path: str | Path, cloud: PointCloud, chunk_points: int = 1 << 20) -> Path:
    """Write ``cloud`` as a binary little-endian PLY at ``path``, ``chunk_points`` points at a time."""
    if chunk_points < 1:
        raise ValueError(f"chunk_points must be at least 1, got {chunk_points}.")
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(ply_header(len(cloud)))
        for start in range(0, len(cloud), chunk_points):
            stop = min(start + chunk_points, len(cloud))
            chunk = np.empty(stop - start, dtype=VERTEX_DTYPE)
            for axis, name in enumerate(("x", "y", "z")):
                chunk[name] = cloud.positions[start:stop, axis]
            for axis, name in enumerate(("red", "green", "blue")):
                chunk[name] = cloud.colors[start:stop, axis]
            handle.write(chunk.tobytes())
    return path


def _parse_header(path: Path, raw: bytes) -> tuple[int, list[tuple[str, int, np.dtype]]]:
    """Header length in bytes and the elements (name, count, record dtype) of a binary PLY."""
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise ValueError(f"{path} is not a PLY file (no 'ply' magic or 'end_header'); write it with write_ply.")
    header_length = raw.index(b"\n", end) + 1
    lines = raw[:header_length].decode("ascii", errors="replace").splitlines()
    byte_order = None
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for line in lines[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info", "end_header"):
            continue
        if words[0] == "format":
            orders = {"binary_little_endian": "<", "binary_big_endian": ">"}
            if words[1] not in orders:
                raise ValueError(f"{path} is PLY format {words[1]!r}; only binary PLY is read. "
                                 "Convert it to binary_little_endian (e.g. with write_ply).")
            byte_order = orders[words[1]]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if words[1] == "list" or not elements or words[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: unsupported PLY property line {line!r}; "
                                 "point clouds need scalar numeric vertex properties.")
            elements[-1][2].append((words[2], byte_order + _PLY_TYPES[words[1]]))
    if byte_order is None:
        raise ValueError(f"{path} has no 'format' line in its PLY header.")
    return header_length, [(name, count, np.dtype(fields)) for name, count, fields in elements]


def read_ply(path: str | Path) -> PointCloud:
    """Read the vertices of a binary PLY (see the module docstring) as a PointCloud."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No PLY file at {path}.")
    with open(path, "rb") as handle:
        header_length, elements = _parse_header(path, handle.read(_MAX_HEADER_BYTES))
    offset = header_length
    for name, count, dtype in elements:
        if name == "vertex":
            break
        offset += count * dtype.itemsize
    else:
        raise ValueError(f"{path} has no 'vertex' element; it is not a point cloud.")
    missing = [field for field in ("x", "y", "z", "red", "green", "blue") if field not in dtype.names]
    if missing:
        raise ValueError(f"{path} vertices lack properties {missing}; "
                         "a coloured point cloud needs x y z red green blue.")
    if any(dtype[field].itemsize != 1 for field in ("red", "green", "blue")):
        raise ValueError(f"{path} stores colours wider than uchar; re-export them as uchar red/green/blue.")
    if path.stat().st_size < offset + count * dtype.itemsize:
        raise ValueError(f"{path} is truncated: its header promises {count} vertices; re-export the file.")
    vertices = np.fromfile(path, dtype=dtype, count=count, offset=offset)
    positions = np.stack([vertices[axis].astype(np.float32) for axis in ("x", "y", "z")], axis=1)
    colors = np.stack([vertices[channel].astype(np.uint8) for channel in ("red", "green", "blue")], axis=1)
    return PointCloud(positions, colors)

