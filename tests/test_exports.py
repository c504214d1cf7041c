"""PLY, GLB and camera files: read back with the formats' libraries (plyfile, pygltflib) and
independent parsers (struct/json)."""

import json
import re
import struct

import numpy as np
import pytest

from fourdnex_core.geometry.export_cameras import (
    CameraSet,
    read_cameras_json,
    read_transforms_json,
    write_cameras_json,
    write_transforms_json,
)
from format_readers import GlbFormatError, read_glb, read_ply, validate_glb
from plyfile import PlyData

from fourdnex_core.geometry.export_glb import write_glb
from fourdnex_core.geometry.export_ply import write_ply
from fourdnex_core.geometry.pointcloud import PointCloud


def random_cloud(count: int, seed: int) -> PointCloud:
    rng = np.random.default_rng(seed)
    return PointCloud(rng.normal(size=(count, 3)).astype(np.float32),
                      rng.integers(0, 256, (count, 3), dtype=np.uint8))


def split_ply(raw: bytes) -> tuple[list[str], bytes]:
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    return raw[:end].decode("ascii").splitlines(), raw[end:]


# ---------------------------------------------------------------- PLY

def test_ply_is_binary_little_endian_float_xyz_uchar_rgb(tmp_path):
    cloud = random_cloud(257, 0)
    path = write_ply(tmp_path / "frame.ply", cloud)
    header, body = split_ply(path.read_bytes())
    assert header[0] == "ply" and "format binary_little_endian 1.0" in header
    assert "element vertex 257" in header
    properties = [line for line in header if line.startswith("property")]
    assert properties == ["property float x", "property float y", "property float z",
                          "property uchar red", "property uchar green", "property uchar blue"]
    assert len(body) == 257 * 15
    records = [struct.unpack_from("<3f3B", body, 15 * i) for i in range(257)]
    np.testing.assert_array_equal(np.array([r[:3] for r in records], np.float32), cloud.positions)
    np.testing.assert_array_equal(np.array([r[3:] for r in records], np.uint8), cloud.colors)


def test_ply_reads_back_with_plyfile_including_an_empty_cloud(tmp_path):
    cloud = random_cloud(1000, 1)
    vertex = PlyData.read(str(write_ply(tmp_path / "a.ply", cloud)))["vertex"]
    assert [p.name for p in vertex.properties] == ["x", "y", "z", "red", "green", "blue"]
    assert vertex["x"].dtype == np.float32 and vertex["red"].dtype == np.uint8
    back = read_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(back.positions, cloud.positions)
    np.testing.assert_array_equal(back.colors, cloud.colors)
    assert len(read_ply(write_ply(tmp_path / "empty.ply", random_cloud(0, 2)))) == 0


# ---------------------------------------------------------------- GLB

def parse_glb(raw: bytes) -> tuple[dict, bytes, bytes]:
    """Independent GLB parse: JSON document, raw JSON chunk bytes, BIN chunk bytes."""
    magic, version, length = struct.unpack_from("<4sII", raw, 0)
    assert magic == b"glTF" and version == 2 and length == len(raw)
    json_length, json_type = struct.unpack_from("<II", raw, 12)
    assert json_type == 0x4E4F534A and json_length % 4 == 0
    json_chunk = raw[20:20 + json_length]
    bin_length, bin_type = struct.unpack_from("<II", raw, 20 + json_length)
    assert bin_type == 0x004E4942 and bin_length % 4 == 0
    binary = raw[28 + json_length:28 + json_length + bin_length]
    assert 28 + json_length + bin_length == len(raw)
    return json.loads(json_chunk), json_chunk, binary


def test_glb_structure_follows_gltf_2(tmp_path):
    clouds = [random_cloud(5, 4), random_cloud(0, 5), random_cloud(123, 6)]
    path = write_glb(tmp_path / "points.glb", clouds)
    document, json_chunk, binary = parse_glb(path.read_bytes())
    stripped = json_chunk.rstrip(b" ")
    assert stripped.endswith(b"}") and len(json_chunk) - len(stripped) < 4
    assert document["asset"]["version"] == "2.0"
    assert document["buffers"] == [{"byteLength": len(binary)}]
    assert [node.get("mesh") for node in document["nodes"]] == [0, None, 1]
    assert document["scenes"][document["scene"]]["nodes"] == [0, 1, 2]
    for mesh, cloud in zip(document["meshes"], [clouds[0], clouds[2]], strict=True):
        (primitive,) = mesh["primitives"]
        assert primitive["mode"] == 0
        position = document["accessors"][primitive["attributes"]["POSITION"]]
        color = document["accessors"][primitive["attributes"]["COLOR_0"]]
        assert (position["componentType"], position["type"], position["count"]) == (5126, "VEC3", len(cloud))
        assert (color["componentType"], color["type"], color["normalized"]) == (5121, "VEC4", True)
        position_view = document["bufferViews"][position["bufferView"]]
        color_view = document["bufferViews"][color["bufferView"]]
        assert (position_view["byteStride"], position_view["byteLength"], position_view["target"]) == \
            (12, 12 * len(cloud), 34962)
        assert (color_view["byteStride"], color_view["byteLength"], color_view["target"]) == \
            (4, 4 * len(cloud), 34962)
        assert position_view["byteOffset"] % 4 == 0 and color_view["byteOffset"] % 4 == 0
        stored = np.frombuffer(binary, "<f4", 3 * len(cloud), position_view["byteOffset"]).reshape(-1, 3)
        expected = cloud.positions * np.array([1, -1, -1], np.float32)
        np.testing.assert_array_equal(stored, expected)
        np.testing.assert_allclose(position["min"], expected.min(axis=0), rtol=1e-6)
        np.testing.assert_allclose(position["max"], expected.max(axis=0), rtol=1e-6)
        rgba = np.frombuffer(binary, np.uint8, 4 * len(cloud), color_view["byteOffset"]).reshape(-1, 4)
        np.testing.assert_array_equal(rgba[:, :3], cloud.colors)
        assert (rgba[:, 3] == 255).all()


def test_glb_padding_uses_spaces_for_json_and_zeros_for_bin(tmp_path):
    for count in range(1, 5):
        path = write_glb(tmp_path / f"p{count}.glb", [random_cloud(count, count)], fps=None)
        raw = path.read_bytes()
        _, json_chunk, binary = parse_glb(raw)
        text = json_chunk.decode()
        assert text == text.rstrip(" ") + " " * (len(text) - len(text.rstrip(" ")))
        assert json.loads(text.rstrip(" "))  # the unpadded JSON is complete
        assert len(binary) == 16 * count  # 12 + 4 bytes per point: already aligned, no BIN padding needed


def test_glb_animation_shows_one_frame_at_a_time(tmp_path):
    clouds = [random_cloud(3, seed) for seed in range(4)]
    document, _, binary = parse_glb(write_glb(tmp_path / "anim.glb", clouds, fps=8).read_bytes())
    (animation,) = document["animations"]
    assert [node.get("scale") for node in document["nodes"]] == [None, [0, 0, 0], [0, 0, 0], [0, 0, 0]]

    def read_accessor(index: int) -> np.ndarray:
        accessor = document["accessors"][index]
        view = document["bufferViews"][accessor["bufferView"]]
        width = {"SCALAR": 1, "VEC3": 3}[accessor["type"]]
        return np.frombuffer(binary, "<f4", accessor["count"] * width, view["byteOffset"]).reshape(-1, width)

    for channel in animation["channels"]:
        sampler = animation["samplers"][channel["sampler"]]
        assert sampler["interpolation"] == "STEP" and channel["target"]["path"] == "scale"
        times = read_accessor(sampler["input"])[:, 0]
        np.testing.assert_allclose(times, np.arange(5) / 8)
        assert document["accessors"][sampler["input"]]["max"] == [pytest.approx(0.5)]
        scales = read_accessor(sampler["output"])
        node = channel["target"]["node"]
        visible = [key for key in range(4) if scales[key].all()]
        assert visible == [node]
        assert not (scales[:4] * (1 - np.eye(4)[node])[:, None]).any()
    validate_glb(tmp_path / "anim.glb")


def test_glb_round_trip_restores_opencv_positions(tmp_path):
    clouds = [random_cloud(50, 7), random_cloud(0, 8), random_cloud(9, 9)]
    back = read_glb(write_glb(tmp_path / "rt.glb", clouds, fps=24))
    assert len(back) == 3
    for original, read in zip(clouds, back, strict=True):
        np.testing.assert_array_equal(read.positions, original.positions)
        np.testing.assert_array_equal(read.colors, original.colors)


def test_glb_validator_reports_broken_files(tmp_path):
    path = write_glb(tmp_path / "good.glb", [random_cloud(10, 10)])
    raw = bytearray(path.read_bytes())
    bad_version = tmp_path / "version.glb"
    bad_version.write_bytes(raw[:4] + struct.pack("<I", 1) + raw[8:])
    with pytest.raises(GlbFormatError, match="version is 1"):
        validate_glb(bad_version)
    truncated = tmp_path / "truncated.glb"
    truncated.write_bytes(raw[:-8])
    with pytest.raises(GlbFormatError, match="truncated"):
        validate_glb(truncated)
    document, _, binary = parse_glb(bytes(raw))
    document["bufferViews"][0]["byteStride"] = 6
    document["accessors"][0].pop("min")
    document["accessors"][1]["normalized"] = False  # uint8 colours must be normalized
    json_bytes = json.dumps(document).encode()
    json_bytes += b" " * (-len(json_bytes) % 4)
    rebuilt = (struct.pack("<II", len(json_bytes), 0x4E4F534A) + json_bytes
               + struct.pack("<II", len(binary), 0x004E4942) + binary)
    broken = tmp_path / "broken.glb"
    broken.write_bytes(b"glTF" + struct.pack("<II", 2, 12 + len(rebuilt)) + rebuilt)
    with pytest.raises(GlbFormatError) as error:
        validate_glb(broken)
    message = str(error.value)
    assert "byteStride 6" in message and "needs min and max" in message and "COLOR_0" in message
    not_glb = tmp_path / "not.glb"
    not_glb.write_bytes(b"PK\x03\x04" + bytes(40))
    with pytest.raises(GlbFormatError, match="no 'glTF' magic"):
        read_glb(not_glb)


def test_glb_of_empty_frames_has_no_bin_chunk_and_reads_back(tmp_path):
    path = write_glb(tmp_path / "empty.glb", [random_cloud(0, 0), random_cloud(0, 1)])
    raw = path.read_bytes()
    json_length = struct.unpack_from("<I", raw, 12)[0]
    assert len(raw) == 20 + json_length == struct.unpack_from("<I", raw, 8)[0]
    assert "buffers" not in json.loads(raw[20:])
    assert [len(cloud) for cloud in read_glb(path)] == [0, 0]


def test_glb_writer_refuses_non_finite_points_and_leaves_no_file(tmp_path):
    cloud = random_cloud(4, 11)
    cloud.positions[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_glb(tmp_path / "nan.glb", [cloud])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- cameras

def orbit_cameras(count: int) -> CameraSet:
    poses = []
    for index in range(count):
        angle = np.radians(10.0 * index)
        pose = np.eye(4)
        pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        pose[:3, 3] = [0.5 * index, -0.1, 0.2]
        poses.append(pose)
    K = np.array([[500.0, 0, 359.5], [0, 480.0, 239.5], [0, 0, 1]])
    return CameraSet(K, np.stack(poses), 720, 480)


def test_cameras_json_round_trips_and_stores_consistent_inverses(tmp_path):
    cameras = orbit_cameras(4)
    path = write_cameras_json(tmp_path / "cameras.json", cameras)
    data = json.loads(path.read_text())
    assert data["convention"] == "opencv" and (data["width"], data["height"]) == (720, 480)
    assert data["intrinsics"]["fx"] == 500.0 and data["intrinsics"]["cy"] == 239.5
    for frame in data["frames"]:
        np.testing.assert_allclose(np.array(frame["cam2world"]) @ np.array(frame["world2cam"]), np.eye(4), atol=1e-12)
    back = read_cameras_json(path)
    np.testing.assert_array_equal(back.K, cameras.K)
    np.testing.assert_array_equal(back.cams2world, cameras.cams2world)
    assert (back.width, back.height) == (720, 480)


def test_transforms_json_uses_nerfstudio_fields_and_opengl_axes(tmp_path):
    cameras = orbit_cameras(3)
    names = [f"images/frame_{i:05d}.png" for i in range(3)]
    path = write_transforms_json(tmp_path / "transforms.json", cameras, names, ply_file_path="ply/frame_00000.ply")
    data = json.loads(path.read_text())
    # Nerfstudio's pixel centres are at +0.5: the scene's centred (359.5, 239.5) is its (360, 240)
    assert (data["fl_x"], data["fl_y"], data["cx"], data["cy"], data["w"], data["h"]) == \
        (500.0, 480.0, 360.0, 240.0, 720, 480)
    assert data["camera_model"] == "OPENCV" and (data["k1"], data["k2"], data["p1"], data["p2"]) == (0, 0, 0, 0)
    assert data["ply_file_path"] == "ply/frame_00000.ply"
    assert [frame["time"] for frame in data["frames"]] == [0.0, 0.5, 1.0]
    for frame, name, pose in zip(data["frames"], names, cameras.cams2world, strict=True):
        assert frame["file_path"] == name
        matrix = np.array(frame["transform_matrix"])
        np.testing.assert_allclose(matrix[:3, 3], pose[:3, 3])  # same camera centre
        np.testing.assert_allclose(-matrix[:3, 2], pose[:3, 2])  # OpenGL looks down -z
        np.testing.assert_allclose(matrix[:3, 1], -pose[:3, 1])  # OpenGL y is up
        np.testing.assert_allclose(matrix[:3, 0], pose[:3, 0])
    back, paths = read_transforms_json(path)
    np.testing.assert_allclose(back.cams2world, cameras.cams2world, atol=1e-12)
    np.testing.assert_allclose(back.K, cameras.K)
    assert paths == names


def nerfstudio_pixel(data: dict, frame: dict, point: np.ndarray) -> np.ndarray:
    """Where Nerfstudio's documented convention puts a world point: camera to world
    ``transform_matrix`` with OpenGL axes (x right, y up, looking down -z), pinhole
    ``fl_x fl_y cx cy`` in pixel coordinates whose pixel (u, v) is centred at (u + 0.5, v + 0.5)."""
    world2cam = np.linalg.inv(np.array(frame["transform_matrix"]))
    x, y, z = world2cam[:3, :3] @ point + world2cam[:3, 3]
    depth = -z  # in front of an OpenGL camera, z < 0
    # nerfstudio_dataparser: a key at the top level is fixed for every frame; a frame's own only without it
    fl_x, fl_y, cx, cy = (data[key] if key in data else frame[key] for key in ("fl_x", "fl_y", "cx", "cy"))
    return np.array([fl_x * x / depth + cx, fl_y * -y / depth + cy])


@pytest.mark.parametrize("per_frame", [False, True])
def test_transforms_json_sees_each_scene_pixel_where_the_scene_does(tmp_path, per_frame):
    """A point unprojected from scene pixel (u, v) of frame f lands, by Nerfstudio's rules, on its
    pixel (u, v), whose centre Nerfstudio puts at (u + 0.5, v + 0.5)."""
    cameras = orbit_cameras(3)
    if per_frame:
        cameras = CameraSet(np.stack([cameras.K * [[s], [s], [1]] for s in (1.0, 1.2, 1.4)]), cameras.cams2world,
                            720, 480)
    data = json.loads(write_transforms_json(tmp_path / "t.json", cameras, ["a", "b", "c"]).read_text())
    for index, frame in enumerate(data["frames"]):
        depth, pose = 2.0 + index, cameras.cams2world[index]
        for u, v in ((0, 0), (719, 479), (123, 45)):
            # the scene's pixel (u, v) at that depth: K^-1 (d [u, v, 1]), then to the world
            local = depth * np.linalg.solve(cameras.frame_K(index), [u, v, 1.0])
            np.testing.assert_allclose(nerfstudio_pixel(data, frame, pose[:3, :3] @ local + pose[:3, 3]),
                                       [u + 0.5, v + 0.5], atol=1e-6)


def test_camera_readers_explain_malformed_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_cameras_json(broken)
    no_frames = tmp_path / "no_frames.json"
    no_frames.write_text(json.dumps({"convention": "opencv", "intrinsics": {"K": np.eye(3).tolist()}}))
    with pytest.raises(ValueError, match="no 'frames' entry"):
        read_cameras_json(no_frames)
    bad_pose = tmp_path / "bad_pose.json"
    bad_pose.write_text(json.dumps({"convention": "opencv", "width": 4, "height": 4,
                                    "intrinsics": {"K": np.eye(3).tolist()}, "frames": [{"cam2world": [[1, 2]]}]}))
    with pytest.raises(ValueError, match="malformed cameras"):
        read_cameras_json(bad_pose)
    with pytest.raises(ValueError, match="one per frame"):
        write_transforms_json(tmp_path / "t.json", orbit_cameras(2), ["a.png"])
    with pytest.raises(FileNotFoundError, match="fourdnex export"):
        read_transforms_json(tmp_path / "missing.json")


@pytest.mark.parametrize("fmt, module, install", [("splats", "scipy", "pip install scipy"),
                                                  ("rerun", "rerun", "pip install rerun-sdk==0.41.0")])
def test_a_missing_optional_package_is_refused_before_any_file(tmp_path, monkeypatch, fmt, module, install):
    """ComfyUI's Python may lack SciPy or the Rerun SDK: the export stops before any work and says what to install."""
    import importlib.util

    from fourdnex_core.geometry.export_scene import ExportOptions, ExportPaths, check_export

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == module else real_find_spec(name, *args))
    paths = ExportPaths(ply=tmp_path / "ply", **{fmt: tmp_path / fmt})
    with pytest.raises(ModuleNotFoundError, match=rf"{re.escape(install)} .*leave that export off"):
        check_export(paths, ExportOptions(), cameras=None, num_frames=3)
    assert list(tmp_path.iterdir()) == []


def test_a_rerun_sdk_of_another_minor_version_is_refused_before_any_file(tmp_path, monkeypatch):
    """The recording API changes between Rerun's minor versions: another one is named with the fix."""
    import importlib.metadata

    from fourdnex_core.geometry.export_scene import ExportOptions, ExportPaths, check_export

    pytest.importorskip("rerun", reason="the rerun extra is not installed")
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.22.1" if name == "rerun-sdk" else real_version(name))
    with pytest.raises(ImportError, match=r"0\.41\.x .*found rerun-sdk 0\.22\.1.*pip install rerun-sdk==0\.41\.0"):
        check_export(ExportPaths(rerun=tmp_path / "points.rrd"), ExportOptions(), cameras=None, num_frames=2)
    assert list(tmp_path.iterdir()) == []

