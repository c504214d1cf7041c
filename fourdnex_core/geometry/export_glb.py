"""GLB (binary glTF 2.0) point-cloud sequences: one node and mesh with a POINTS primitive per frame.

ComfyUI's 3D preview (frontend 0.3.x) shows POINTS GLBs, not PLY. Layout of a written file:

* node ``frame_00000`` ... -> mesh -> one primitive, ``mode`` 0 (POINTS), with
  ``POSITION`` (float32 VEC3, with min/max) and ``COLOR_0`` (normalized uint8 VEC4, alpha 255),
  each in its own tightly packed bufferView (``target`` ARRAY_BUFFER). A frame without points is
  a node without a mesh (glTF accessors cannot be empty).
* axes: glTF is y up, looking down -z; the scene is OpenCV (y down, z forward), so positions are
  stored as (x, -y, -z) (:func:`opencv_to_gltf`, its own inverse). :func:`read_glb` undoes it.
* with ``fps``: an animation "frames" shows one node at a time (STEP keys on ``scale``, 0 or 1);
  nodes after the first start at scale 0, so a viewer that ignores animations shows frame 0.

The writer spools the point data to a hidden ``.partial`` file beside ``path`` frame by frame and
assembles the GLB on ``close()`` (written atomically), so memory stays at one frame whatever the
sequence length and an interrupted export leaves no GLB at all.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import numpy as np

from fourdnex_core.atomic_write import atomic_path, partial_path
from fourdnex_core.geometry.pointcloud import PointCloud

GLB_MAGIC = b"glTF"
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942
ARRAY_BUFFER = 34962
FLOAT, UNSIGNED_BYTE, UNSIGNED_SHORT = 5126, 5121, 5123
POINTS = 0
_COMPONENT_BYTES = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}
_TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
_NUMPY_COMPONENTS = {5120: "<i1", 5121: "<u1", 5122: "<i2", 5123: "<u2", 5125: "<u4", 5126: "<f4"}
_GLTF_AXES = np.array([1.0, -1.0, -1.0], dtype=np.float32)


class GlbFormatError(ValueError):
    """A GLB file breaks the glTF 2.0 binary format (the message lists every problem found)."""


def opencv_to_gltf(positions: np.ndarray) -> np.ndarray:
    """Flip OpenCV axes (y down, z forward) to glTF's (y up, -z forward): [N, 3] -> [N, 3]. Self-inverse."""
    return (np.asarray(positions, dtype=np.float32) * _GLTF_AXES).astype(np.float32)


@dataclasses.dataclass
class _FrameRecord:
    name: str
    count: int
    offset: int
    minimum: list[float]
    maximum: list[float]


class GlbPointsWriter:
    """Write a point-cloud sequence as GLB, one frame at a time.

    >>> with GlbPointsWriter("points.glb", fps=24) as writer:
    ...     for cloud in clouds:
    ...         writer.add_frame(cloud)
    """

    def __init__(self, path: str | Path, fps: float | None = None) -> None:
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number (or None for no animation), got {fps}.")
        self.path = Path(path)
        self.fps = fps
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._spool_path = partial_path(self.path, ".spool")
        self._spool = open(self._spool_path, "wb")
        self._frames: list[_FrameRecord] = []
        self._bytes = 0

    def add_frame(self, cloud: PointCloud, name: str | None = None) -> None:
        """Append one frame; ``cloud`` is in OpenCV axes."""
        if self._spool.closed:
            raise RuntimeError(f"GLB writer for {self.path} is closed; open a new one to write more frames.")
        positions = opencv_to_gltf(cloud.positions)
        if not np.isfinite(positions).all():
            raise ValueError("PointCloud has non-finite positions; filter them (pointcloud.valid_mask) before export.")
        name = name or f"frame_{len(self._frames):05d}"
        bounds = ([], []) if len(cloud) == 0 else (positions.min(axis=0).tolist(), positions.max(axis=0).tolist())
        self._frames.append(_FrameRecord(name, len(cloud), self._bytes, *bounds))
        rgba = np.empty((len(cloud), 4), dtype=np.uint8)
        rgba[:, :3] = cloud.colors
        rgba[:, 3] = 255
        self._spool.write(positions.astype("<f4").tobytes())
        self._spool.write(rgba.tobytes())
        self._bytes += positions.nbytes + rgba.nbytes

    def close(self) -> Path:
        """Assemble ``path`` from the spooled frames and remove the spool file."""
        if self._spool.closed:
            return self.path
        self._spool.close()
        try:
            animation_data = _animation_data(len(self._frames), self.fps) if self.fps and self._frames else b""
            bin_length = self._bytes + len(animation_data)
            document = _gltf_document(self._frames, self._bytes, bin_length, self.fps)
            json_bytes = json.dumps(document, separators=(",", ":")).encode("utf-8")
            json_bytes += b" " * (-len(json_bytes) % 4)
            bin_header = struct.pack("<II", bin_length, CHUNK_BIN) if bin_length else b""
            total = 12 + 8 + len(json_bytes) + len(bin_header) + bin_length
            with (atomic_path(self.path) as temporary, open(temporary, "wb") as handle,
                  open(self._spool_path, "rb") as spool):
                handle.write(GLB_MAGIC + struct.pack("<II", 2, total))
                handle.write(struct.pack("<II", len(json_bytes), CHUNK_JSON) + json_bytes)
                handle.write(bin_header)
                shutil.copyfileobj(spool, handle, 1 << 22)
                handle.write(animation_data)
        finally:
            self._spool_path.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Drop the spooled frames without writing ``path``."""
        self._spool.close()
        self._spool_path.unlink(missing_ok=True)

    def __enter__(self) -> GlbPointsWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_glb(path: str | Path, clouds: Iterable[PointCloud], fps: float | None = None) -> Path:
    """Write a sequence of point clouds (OpenCV axes) as one GLB; see the module docstring."""
    with GlbPointsWriter(path, fps) as writer:
        for cloud in clouds:
            writer.add_frame(cloud)
    return writer.path


def _animation_data(num_frames: int, fps: float) -> bytes:
    """Key times [F + 1] (seconds) then, per node, STEP scales [F + 1, 3]: node k is 1 at key k, else 0.

    The extra last key repeats the last frame so that each frame lasts 1/fps, the last included.
    """
    times = (np.arange(num_frames + 1) / fps).astype("<f4")
    visible = np.eye(num_frames + 1, num_frames, dtype="<f4")
    visible[num_frames, num_frames - 1] = 1.0
    scales = np.repeat(visible.T[:, :, None], 3, axis=2)
    return times.tobytes() + scales.tobytes()


def _gltf_document(frames: list[_FrameRecord], points_bytes: int, bin_length: int,
                   fps: float | None) -> dict:
    """The glTF JSON for ``frames`` whose data sits at the start of the BIN chunk."""
    nodes, meshes, accessors, views = [], [], [], []

    def add_accessor(offset: int, length: int, stride: int | None, target: int | None, **accessor: object) -> int:
        view = {"buffer": 0, "byteOffset": offset, "byteLength": length}
        if stride is not None:
            view["byteStride"] = stride
        if target is not None:
            view["target"] = target
        views.append(view)
        accessors.append({"bufferView": len(views) - 1, "byteOffset": 0, **accessor})
        return len(accessors) - 1

    for index, frame in enumerate(frames):
        node: dict = {"name": frame.name}
        if fps and index > 0:
            node["scale"] = [0.0, 0.0, 0.0]
        if frame.count:
            position = add_accessor(frame.offset, 12 * frame.count, 12, ARRAY_BUFFER, componentType=FLOAT,
                                    count=frame.count, type="VEC3", min=frame.minimum, max=frame.maximum)
            color = add_accessor(frame.offset + 12 * frame.count, 4 * frame.count, 4, ARRAY_BUFFER,
                                 componentType=UNSIGNED_BYTE, normalized=True, count=frame.count, type="VEC4")
            meshes.append({"name": frame.name, "primitives": [
                {"attributes": {"POSITION": position, "COLOR_0": color}, "mode": POINTS}]})
            node["mesh"] = len(meshes) - 1
        nodes.append(node)
    document: dict = {
        "asset": {"version": "2.0", "generator": "fourdnex_core"},
        "scene": 0,
        "scenes": [{"name": "4dnex", "nodes": list(range(len(nodes)))}],
        "nodes": nodes,
    }
    if fps and frames:
        keys = len(frames) + 1
        times = add_accessor(points_bytes, 4 * keys, None, None, componentType=FLOAT, count=keys,
                             type="SCALAR", min=[0.0], max=[float(np.float32(len(frames) / fps))])
        scale_start = points_bytes + 4 * keys
        samplers, channels = [], []
        for index in range(len(frames)):
            scales = add_accessor(scale_start + 12 * keys * index, 12 * keys, None, None,
                                  componentType=FLOAT, count=keys, type="VEC3")
            samplers.append({"input": times, "output": scales, "interpolation": "STEP"})
            channels.append({"sampler": index, "target": {"node": index, "path": "scale"}})
        document["animations"] = [{"name": "frames", "samplers": samplers, "channels": channels}]
    if meshes:
        document["meshes"] = meshes
    if accessors:
        document["accessors"] = accessors
        document["bufferViews"] = views
        document["buffers"] = [{"byteLength": bin_length}]
    return document


def load_glb(path: str | Path) -> tuple[dict, np.ndarray]:
    """The JSON document and BIN chunk (uint8 [B]) of a GLB, container checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No GLB file at {path}.")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(20)
        if len(header) < 20 or header[:4] != GLB_MAGIC:
            raise GlbFormatError(f"{path} is not a GLB file (no 'glTF' magic); write it with write_glb.")
        version, total, json_length, json_type = struct.unpack("<IIII", header[4:])
        problems = []
        if version != 2:
            problems.append(f"container version is {version}, glTF 2.0 needs 2")
        if total != size:
            problems.append(f"header length {total} differs from the file size {size} (truncated?)")
        if json_type != CHUNK_JSON:
            problems.append("the first chunk is not JSON")
        if json_length % 4:
            problems.append(f"JSON chunk length {json_length} is not a multiple of 4")
        if problems:
            raise GlbFormatError(f"{path}: " + "; ".join(problems) + ".")
        json_bytes = handle.read(json_length)
        try:
            document = json.loads(json_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise GlbFormatError(f"{path}: the JSON chunk does not parse ({error}).") from error
        binary = np.zeros(0, dtype=np.uint8)
        chunk_header = handle.read(8)
    if len(chunk_header) == 8:
        bin_length, bin_type = struct.unpack("<II", chunk_header)
        start = 20 + json_length + 8
        if bin_type != CHUNK_BIN or bin_length % 4 or start + bin_length > size:
            raise GlbFormatError(f"{path}: the second chunk must be BIN with a length that is a multiple of 4 "
                                 "and fits in the file.")
        if bin_length:
            binary = np.fromfile(path, dtype=np.uint8, count=bin_length, offset=start)
    return document, binary


def validate_glb(path: str | Path) -> dict:
    """Check a GLB against the glTF 2.0 rules that matter for point clouds; return its JSON document.

    Raises GlbFormatError listing every problem: asset version, buffer/bufferView/accessor bounds,
    strides, vertex-attribute alignment and targets, POSITION bounds and types, COLOR_0 types,
    primitive modes.
    """
    return _load_valid(path)[0]


def _load_valid(path: str | Path) -> tuple[dict, np.ndarray]:
    document, binary = load_glb(path)
    try:
        problems = _document_problems(document, len(binary))
    except (KeyError, TypeError, IndexError, AttributeError) as error:
        raise GlbFormatError(f"{path}: the glTF JSON is malformed ({type(error).__name__}: {error}); "
                             "re-export the file.") from error
    if problems:
        raise GlbFormatError(f"{path} is not valid glTF 2.0: " + "; ".join(problems) + ".")
    return document, binary


def _document_problems(document: dict, bin_length: int) -> list[str]:
    problems = []
    if document.get("asset", {}).get("version") != "2.0":
        problems.append('asset.version must be "2.0"')
    buffers, views, accessors = (document.get(key, []) for key in ("buffers", "bufferViews", "accessors"))
    for index, buffer in enumerate(buffers):
        if "uri" not in buffer and not (bin_length - 3 <= buffer["byteLength"] <= bin_length):
            problems.append(f"buffers[{index}].byteLength {buffer['byteLength']} does not match the BIN chunk")
    for index, view in enumerate(views):
        if view["buffer"] >= len(buffers):
            problems.append(f"bufferViews[{index}] points at a missing buffer")
        elif view.get("byteOffset", 0) + view["byteLength"] > buffers[view["buffer"]]["byteLength"]:
            problems.append(f"bufferViews[{index}] runs past the end of its buffer")
        stride = view.get("byteStride")
        if stride is not None and (stride % 4 or not 4 <= stride <= 252):
            problems.append(f"bufferViews[{index}].byteStride {stride} must be a multiple of 4 in 4..252")
    for index, accessor in enumerate(accessors):
        problems += _accessor_problems(index, accessor, views)
    vertex_accessors = set()
    for mesh_index, mesh in enumerate(document.get("meshes", [])):
        for primitive in mesh["primitives"]:
            if primitive.get("mode", 4) not in range(7):
                problems.append(f"meshes[{mesh_index}] has primitive mode {primitive.get('mode')}")
            attributes = primitive["attributes"]
            vertex_accessors.update(attributes.values())
            problems += _attribute_problems(mesh_index, attributes, accessors)
    for index in sorted(vertex_accessors):
        if index >= len(accessors) or "bufferView" not in accessors[index]:
            continue
        accessor = accessors[index]
        view = views[accessor["bufferView"]] if accessor["bufferView"] < len(views) else {}
        if view.get("target", ARRAY_BUFFER) != ARRAY_BUFFER:
            problems.append(f"accessors[{index}] is a vertex attribute but its bufferView target is not 34962")
        if accessor.get("byteOffset", 0) % 4 or view.get("byteOffset", 0) % 4:
            problems.append(f"accessors[{index}] is a vertex attribute not aligned to 4 bytes")
    return problems


def _accessor_problems(index: int, accessor: dict, views: list[dict]) -> list[str]:
    problems = []
    component, kind, count = accessor.get("componentType"), accessor.get("type"), accessor.get("count", 0)
    if component not in _COMPONENT_BYTES or kind not in _TYPE_SIZES or count < 1:
        return [f"accessors[{index}] has componentType {component}, type {kind}, count {count}"]
    if "bufferView" not in accessor:
        return problems
    if accessor["bufferView"] >= len(views):
        return [f"accessors[{index}] points at a missing bufferView"]
    view = views[accessor["bufferView"]]
    element = _COMPONENT_BYTES[component] * _TYPE_SIZES[kind]
    stride = view.get("byteStride", element)
    offset = accessor.get("byteOffset", 0)
    if offset % _COMPONENT_BYTES[component]:
        problems.append(f"accessors[{index}].byteOffset is not a multiple of its component size")
    if offset + stride * (count - 1) + element > view["byteLength"]:
        problems.append(f"accessors[{index}] runs past the end of its bufferView")
    return problems


def _attribute_problems(mesh_index: int, attributes: dict, accessors: list[dict]) -> list[str]:
    problems = []
    if any(value >= len(accessors) for value in attributes.values()):
        return [f"meshes[{mesh_index}] refers to a missing accessor"]
    if "POSITION" not in attributes:
        return [f"meshes[{mesh_index}] has a primitive without POSITION"]
    position = accessors[attributes["POSITION"]]
    if position.get("type") != "VEC3" or position.get("componentType") != FLOAT:
        problems.append(f"meshes[{mesh_index}] POSITION must be float (5126) VEC3")
    if len(position.get("min", [])) != 3 or len(position.get("max", [])) != 3:
        problems.append(f"meshes[{mesh_index}] POSITION accessor needs min and max")
    if "COLOR_0" in attributes:
        color = accessors[attributes["COLOR_0"]]
        component = color.get("componentType")
        if color.get("type") not in ("VEC3", "VEC4") or component not in (FLOAT, UNSIGNED_BYTE, UNSIGNED_SHORT) \
                or (component != FLOAT and not color.get("normalized", False)):
            problems.append(f"meshes[{mesh_index}] COLOR_0 must be VEC3/VEC4 of float or normalized "
                            "unsigned byte/short")
    return problems


def _accessor_array(document: dict, binary: np.ndarray, index: int) -> np.ndarray:
    """Accessor ``index`` as an array [count, components] (strided bufferViews handled)."""
    accessor = document["accessors"][index]
    view = document["bufferViews"][accessor["bufferView"]]
    dtype = np.dtype(_NUMPY_COMPONENTS[accessor["componentType"]])
    width = _TYPE_SIZES[accessor["type"]]
    stride = view.get("byteStride", dtype.itemsize * width)
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    return np.ndarray((accessor["count"], width), dtype=dtype, buffer=binary, offset=start,
                      strides=(stride, dtype.itemsize)).copy()


def _colors_uint8(document: dict, binary: np.ndarray, index: int) -> np.ndarray:
    values = _accessor_array(document, binary, index)[:, :3]
    if values.dtype == np.uint8:
        return values
    scale = 1.0 if values.dtype == np.float32 else 1.0 / 65535.0
    return np.clip(np.rint(values.astype(np.float64) * scale * 255.0), 0, 255).astype(np.uint8)


def read_glb(path: str | Path) -> list[PointCloud]:
    """The point cloud of each node of the default scene, in order, back in OpenCV axes.

    Nodes without a mesh give empty clouds; points without COLOR_0 are white.
    """
    document, binary = _load_valid(path)
    scene = document.get("scenes", [{}])[document.get("scene", 0)]
    clouds = []
    for node_index in scene.get("nodes", []):
        node = document["nodes"][node_index]
        positions, colors = [np.zeros((0, 3), np.float32)], [np.zeros((0, 3), np.uint8)]
        for primitive in document["meshes"][node["mesh"]]["primitives"] if "mesh" in node else []:
            if primitive.get("mode", 4) != POINTS:
                continue
            attributes = primitive["attributes"]
            points = _accessor_array(document, binary, attributes["POSITION"])
            positions.append(opencv_to_gltf(points))
            colors.append(_colors_uint8(document, binary, attributes["COLOR_0"]) if "COLOR_0" in attributes
                          else np.full((len(points), 3), 255, np.uint8))
        clouds.append(PointCloud(np.concatenate(positions), np.concatenate(colors)))
    return clouds
