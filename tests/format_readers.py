"""Reading the project's exported files back in tests, with the formats' own libraries.

The product writes PLY (``plyfile``), GLB and the in-node viewer's file but never reads them;
the tests read them here: PLY with ``plyfile``, GLB with ``pygltflib`` (plus the glTF 2.0 rules
that matter for point clouds, checked on the document pygltflib parsed), the viewer file by its
documented layout (its product reader is the JavaScript in ``web/``).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from plyfile import PlyData
from pygltflib import GLTF2

from fourdnex_core.geometry.export_glb import FLOAT, POINTS, UNSIGNED_BYTE, UNSIGNED_SHORT, opencv_to_gltf
from fourdnex_core.geometry.export_viewer import VIEWER_MAGIC
from fourdnex_core.geometry.pointcloud import PointCloud

ARRAY_BUFFER = 34962
_COMPONENT_BYTES = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}
_TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
_NUMPY_COMPONENTS = {5120: "<i1", 5121: "<u1", 5122: "<i2", 5123: "<u2", 5125: "<u4", 5126: "<f4"}


# ---------------------------------------------------------------- PLY

def read_ply(path: str | Path) -> PointCloud:
    """The vertices of a PLY (x y z, uchar red green blue) as a PointCloud, read by plyfile."""
    vertex = PlyData.read(str(path))["vertex"]
    positions = np.stack([np.asarray(vertex[axis], np.float32) for axis in ("x", "y", "z")], axis=1)
    colors = np.stack([np.asarray(vertex[channel]) for channel in ("red", "green", "blue")], axis=1)
    assert colors.dtype == np.uint8, f"{path}: colours are {colors.dtype}, not uchar"
    return PointCloud(positions.reshape(-1, 3), colors.reshape(-1, 3))


# ---------------------------------------------------------------- GLB

class GlbFormatError(ValueError):
    """A GLB file breaks the glTF 2.0 binary format (the message lists every problem found)."""


def load_glb(path: str | Path) -> tuple[dict, bytes]:
    """The JSON document (as pygltflib parsed it) and BIN chunk of a GLB, the container checked."""
    raw = Path(path).read_bytes()
    if raw[:4] != b"glTF":
        raise GlbFormatError(f"{path} is not a GLB file (no 'glTF' magic).")
    version, total, json_length, json_type = struct.unpack_from("<IIII", raw, 4)
    problems = []
    if version != 2:
        problems.append(f"container version is {version}, glTF 2.0 needs 2")
    if total != len(raw):
        problems.append(f"header length {total} differs from the file size {len(raw)} (truncated?)")
    if json_type != 0x4E4F534A or json_length % 4:
        problems.append("the first chunk must be JSON with a length that is a multiple of 4")
    if len(raw) > 20 + json_length:
        bin_length, bin_type = struct.unpack_from("<II", raw, 20 + json_length)
        if bin_type != 0x004E4942 or bin_length % 4 or 28 + json_length + bin_length > len(raw):
            problems.append("the second chunk must be BIN, a multiple of 4 long, inside the file")
    if problems:
        raise GlbFormatError(f"{path}: " + "; ".join(problems) + ".")
    gltf = GLTF2.load_from_bytes(raw)
    return json.loads(gltf.to_json()), gltf.binary_blob() or b""


def validate_glb(path: str | Path) -> dict:
    """Check a GLB against the glTF 2.0 rules that matter for point clouds; return its document."""
    document, binary = load_glb(path)
    problems = _document_problems(document, len(binary))
    if problems:
        raise GlbFormatError(f"{path} is not valid glTF 2.0: " + "; ".join(problems) + ".")
    return document


def _document_problems(document: dict, bin_length: int) -> list[str]:
    problems = []
    if document.get("asset", {}).get("version") != "2.0":
        problems.append('asset.version must be "2.0"')
    buffers, views, accessors = (document.get(key, []) for key in ("buffers", "bufferViews", "accessors"))
    for index, buffer in enumerate(buffers):
        if "uri" not in buffer and not (bin_length - 3 <= buffer["byteLength"] <= bin_length):
            problems.append(f"buffers[{index}].byteLength {buffer['byteLength']} does not match the BIN chunk")
    for index, view in enumerate(views):
        if view.get("byteOffset", 0) + view["byteLength"] > buffers[view["buffer"]]["byteLength"]:
            problems.append(f"bufferViews[{index}] runs past the end of its buffer")
        stride = view.get("byteStride")
        if stride is not None and (stride % 4 or not 4 <= stride <= 252):
            problems.append(f"bufferViews[{index}].byteStride {stride} must be a multiple of 4 in 4..252")
    for index, accessor in enumerate(accessors):
        view = views[accessor["bufferView"]]
        element = _COMPONENT_BYTES[accessor["componentType"]] * _TYPE_SIZES[accessor["type"]]
        end = accessor.get("byteOffset", 0) + view.get("byteStride", element) * (accessor["count"] - 1) + element
        if accessor["count"] < 1 or end > view["byteLength"]:
            problems.append(f"accessors[{index}] is empty or runs past the end of its bufferView")
    for mesh_index, mesh in enumerate(document.get("meshes", [])):
        for primitive in mesh["primitives"]:
            attributes = primitive["attributes"]
            position = accessors[attributes["POSITION"]]
            if position["type"] != "VEC3" or position["componentType"] != FLOAT:
                problems.append(f"meshes[{mesh_index}] POSITION must be float (5126) VEC3")
            if len(position.get("min", [])) != 3 or len(position.get("max", [])) != 3:
                problems.append(f"meshes[{mesh_index}] POSITION accessor needs min and max")
            if "COLOR_0" in attributes:
                color = accessors[attributes["COLOR_0"]]
                component = color["componentType"]
                if color["type"] not in ("VEC3", "VEC4") or component not in (FLOAT, UNSIGNED_BYTE, UNSIGNED_SHORT) \
                        or (component != FLOAT and not color.get("normalized", False)):
                    problems.append(f"meshes[{mesh_index}] COLOR_0 must be VEC3/VEC4 of float or normalized "
                                    "unsigned byte/short")
            for value in attributes.values():
                view = views[accessors[value]["bufferView"]]
                if view.get("target", ARRAY_BUFFER) != ARRAY_BUFFER or view.get("byteOffset", 0) % 4:
                    problems.append(f"accessors[{value}] is a vertex attribute that is not an aligned ARRAY_BUFFER")
    return problems


def _accessor_array(document: dict, binary: bytes, index: int) -> np.ndarray:
    """Accessor ``index`` as an array [count, components] (strided bufferViews handled)."""
    accessor = document["accessors"][index]
    view = document["bufferViews"][accessor["bufferView"]]
    dtype = np.dtype(_NUMPY_COMPONENTS[accessor["componentType"]])
    width = _TYPE_SIZES[accessor["type"]]
    stride = view.get("byteStride", dtype.itemsize * width)
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    return np.ndarray((accessor["count"], width), dtype=dtype, buffer=binary, offset=start,
                      strides=(stride, dtype.itemsize)).copy()


def read_glb(path: str | Path) -> list[PointCloud]:
    """The POINTS cloud of each node of the default scene, back in OpenCV axes (validated first)."""
    document = validate_glb(path)
    _, binary = load_glb(path)
    clouds = []
    for node_index in document["scenes"][document.get("scene", 0)].get("nodes", []):
        node = document["nodes"][node_index]
        positions, colors = [np.zeros((0, 3), np.float32)], [np.zeros((0, 3), np.uint8)]
        for primitive in document["meshes"][node["mesh"]]["primitives"] if "mesh" in node else []:
            assert primitive.get("mode", 4) == POINTS
            attributes = primitive["attributes"]
            positions.append(opencv_to_gltf(_accessor_array(document, binary, attributes["POSITION"])))
            colors.append(_accessor_array(document, binary, attributes["COLOR_0"])[:, :3])
        clouds.append(PointCloud(np.concatenate(positions), np.concatenate(colors)))
    return clouds


# ---------------------------------------------------------------- the in-node viewer's file

def read_viewer_points(path: str | Path) -> tuple[dict, list[PointCloud]]:
    """A file of ``export_viewer.write_viewer_points``, by the layout in its docstring: (header, clouds)."""
    raw = Path(path).read_bytes()
    assert raw[:8] == VIEWER_MAGIC, f"{path} is not a 4DNeX viewer file"
    length = int(np.frombuffer(raw[8:12], "<u4")[0])
    header = json.loads(raw[12:12 + length])
    data = memoryview(raw)[12 + length:]
    clouds = []
    for frame in header["frames"]:
        count, start = frame["count"], frame["offset"]
        positions = np.frombuffer(data[start:start + 12 * count], "<f4").reshape(count, 3)
        colors = np.frombuffer(data[start + 12 * count:start + 15 * count], np.uint8).reshape(count, 3)
        clouds.append(PointCloud(positions.copy(), colors.copy()))
    return header, clouds
