"""Reading and validating GLB (binary glTF 2.0) point-cloud files, such as :mod:`.export_glb` writes.

* :func:`load_glb`: the JSON document and BIN chunk, the container checked;
* :func:`validate_glb`: every glTF 2.0 rule that matters for point clouds, all problems in one
  :class:`GlbFormatError`;
* :func:`read_glb`: the point cloud of each node, back in OpenCV axes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from fourdnex_core.geometry.export_glb import (
    ARRAY_BUFFER,
    CHUNK_BIN,
    CHUNK_JSON,
    FLOAT,
    GLB_MAGIC,
    POINTS,
    UNSIGNED_BYTE,
    UNSIGNED_SHORT,
    opencv_to_gltf,
)
from fourdnex_core.geometry.pointcloud import PointCloud

_COMPONENT_BYTES = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}
_TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
_NUMPY_COMPONENTS = {5120: "<i1", 5121: "<u1", 5122: "<i2", 5123: "<u2", 5125: "<u4", 5126: "<f4"}


class GlbFormatError(ValueError):
    """A GLB file breaks the glTF 2.0 binary format (the message lists every problem found)."""


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
