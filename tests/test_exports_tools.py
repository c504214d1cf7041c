"""COLMAP, Gaussian-splat PLY, Rerun and Nerfstudio exports of a post-optimized scene, each read
back by the tool's own reader (pycolmap, plyfile, rerun.chunk.RrdReader) and its values checked.

Tolerances: COLMAP intrinsics and positions (float64 in the file) come back to 1e-9 and 1e-12;
COLMAP poses to 1e-7 (the scene's float32 rotations are orthonormal to ~1e-8, a quaternion is
exactly so); Rerun's poses and intrinsics (float32 in the file) to 1e-6; pixel positions to
1e-3 px; positions that stay float32 all the way exactly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from format_readers import read_ply
from PIL import Image
from plyfile import PlyData

from fourdnex_core.cli import main
from fourdnex_core.geometry.export_cameras import read_transforms_json
from fourdnex_core.geometry.export_scene import ExportOptions, ExportPaths, export_scene
from fourdnex_core.geometry.export_splats import SH_C0, point_spacing, splat_properties, write_splats
from fourdnex_core.geometry import pointcloud
from fourdnex_core.geometry.pointcloud import PointCloud, frame_depth
from fourdnex_core.geometry.synthetic import make_synthetic_scene
from fourdnex_core.scene_file import Scene, load_scene, save_scene

FRAMES, HEIGHT, WIDTH = 4, 24, 36
NO_FILTERS = ["--edge-rtol", "0", "--outlier-std", "0"]


def postoptimized(folder: Path, **options) -> Scene:
    """A synthetic scene, post-optimized by ``fourdnex postopt``, in ``folder``."""
    save_scene(make_synthetic_scene(FRAMES, HEIGHT, WIDTH, seed=41, **options).to_scene_file(), folder / "scene.npz")
    assert main(["postopt", str(folder)]) == 0
    return load_scene(folder / "scene.npz")


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene")
    postoptimized(folder)
    return folder


@pytest.fixture(scope="module")
def zoom_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoom")
    assert postoptimized(folder, zoom=1.4).K.shape == (FRAMES, 3, 3)
    return folder


def export(scene_dir: Path, out: Path, *flags: str) -> Path:
    assert main(["export", str(scene_dir), "--out", str(out), *NO_FILTERS, *flags]) == 0
    return out


def frame_points(scene: Scene, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``frame``'s points [N, 3] and their pixels [N, 2] (u, v), every valid pixel, row-major."""
    valid = scene.valid[frame]
    xyz = pointcloud.frame_points(scene, frame)  # from depth, K and the camera
    rows, columns = np.nonzero(valid)
    return xyz[valid], np.stack([columns, rows], axis=1)


# ---------------------------------------------------------------- COLMAP


@pytest.mark.parametrize("kind", ["binary", "text"])
def test_colmap_model_reads_back_in_pycolmap_with_the_scene_cameras_and_points(scene_dir, tmp_path, kind):
    out = export(scene_dir, tmp_path / "out", "--colmap", kind)
    scene = load_scene(scene_dir / "scene.npz")
    suffix = ".bin" if kind == "binary" else ".txt"
    model = out / "sparse" / "0"
    assert sorted(path.name for path in model.iterdir()) == [f"cameras{suffix}", f"images{suffix}",
                                                            f"points3D{suffix}"]
    reconstruction = pycolmap.Reconstruction(str(model))
    (camera,) = reconstruction.cameras.values()
    assert camera.model == pycolmap.CameraModelId.PINHOLE and (camera.width, camera.height) == (WIDTH, HEIGHT)
    K = scene.K.astype(np.float64)
    np.testing.assert_allclose(camera.params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], rtol=0, atol=1e-9)
    assert sorted(reconstruction.images) == list(range(1, FRAMES + 1))
    for image_id, image in reconstruction.images.items():
        frame = image_id - 1
        assert image.name == f"frame_{frame:05d}.png" and image.camera_id == camera.camera_id
        world2cam = np.linalg.inv(scene.cams2world[frame].astype(np.float64))
        # the scene stores float32 rotations, orthonormal to ~1e-8; COLMAP's unit quaternion is exact
        np.testing.assert_allclose(image.cam_from_world().matrix(), world2cam[:3], rtol=0, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / image.name)), scene.rgb[frame])
    # points3D: frame 0's points (every valid pixel: no filters, below the budget), in pixel order
    points, pixels = frame_points(scene, 0)
    ids = sorted(reconstruction.points3D)
    assert ids == list(range(1, len(points) + 1))
    stored = np.array([reconstruction.points3D[i].xyz for i in ids])
    colours = np.array([reconstruction.points3D[i].color for i in ids])
    np.testing.assert_allclose(stored, points, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(colours, scene.rgb[0][scene.valid[0]])
    # each point is observed in image 1 at its scene pixel, whose centre COLMAP puts at +0.5
    first = reconstruction.images[1]
    assert first.num_points3D == len(points)
    observed = np.array([first.points2D[reconstruction.points3D[i].track.elements[0].point2D_idx].xy for i in ids])
    np.testing.assert_allclose(observed, pixels + 0.5, atol=1e-3)
    projected = np.array([first.project_point(xyz) for xyz in points[:: max(1, len(points) // 50)]])
    np.testing.assert_allclose(projected, pixels[:: max(1, len(points) // 50)] + 0.5, atol=1e-3)
    reconstruction.update_point_3d_errors()
    assert reconstruction.compute_mean_reprojection_error() < 1e-3


def test_colmap_writes_a_camera_per_frame_for_a_zoom_and_points_of_every_kth_frame(zoom_dir, tmp_path):
    out = export(zoom_dir, tmp_path / "out", "--colmap", "--colmap-stride", "2")
    scene = load_scene(zoom_dir / "scene.npz")
    reconstruction = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert sorted(reconstruction.cameras) == list(range(1, FRAMES + 1))
    for image_id, image in reconstruction.images.items():
        K = scene.K[image_id - 1].astype(np.float64)
        assert image.camera_id == image_id
        np.testing.assert_allclose(reconstruction.cameras[image_id].params,
                                   [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], rtol=0, atol=1e-9)
    counts = {image_id: image.num_points3D for image_id, image in reconstruction.images.items()}
    assert counts == {1: int(scene.valid[0].sum()), 2: 0, 3: int(scene.valid[2].sum()), 4: 0}
    assert reconstruction.num_points3D() == counts[1] + counts[3]
    points, _ = frame_points(scene, 2)
    from_third = np.array([p.xyz for p in reconstruction.points3D.values() if p.track.elements[0].image_id == 3])
    np.testing.assert_allclose(np.sort(from_third, axis=0), np.sort(points, axis=0), rtol=0, atol=1e-12)


def test_colmap_points_stay_within_the_point_budget(scene_dir, tmp_path):
    out = export(scene_dir, tmp_path / "out", "--colmap", "text", "--colmap-stride", "1", "--max-points", "50")
    reconstruction = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert reconstruction.num_points3D() == 50
    assert {p.track.elements[0].image_id for p in reconstruction.points3D.values()} == set(range(1, FRAMES + 1))


# ---------------------------------------------------------------- Gaussian splats


def test_splat_ply_has_the_3dgs_layout_and_activations(scene_dir, tmp_path):
    out = export(scene_dir, tmp_path / "out", "--splats", "--ply")
    for frame in (0, FRAMES - 1):
        cloud = read_ply(out / "ply" / f"frame_{frame:05d}.ply")
        vertex = PlyData.read(str(out / "splats" / f"frame_{frame:05d}.ply"))["vertex"]
        assert [p.name for p in vertex.properties] == [
            "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
            "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
        assert all(vertex[p.name].dtype == np.float32 for p in vertex.properties)
        assert vertex.count == len(cloud) > 100
        positions = np.stack([vertex[axis] for axis in "xyz"], axis=1)
        np.testing.assert_array_equal(positions, cloud.positions)
        colours = 0.5 + SH_C0 * np.stack([vertex[f"f_dc_{c}"] for c in range(3)], axis=1)
        np.testing.assert_allclose(colours, cloud.colors / 255.0, atol=1e-6)
        np.testing.assert_allclose(1 / (1 + np.exp(-vertex["opacity"])), 0.95, atol=1e-6)
        rotation = np.stack([vertex[f"rot_{i}"] for i in range(4)], axis=1)
        np.testing.assert_array_equal(rotation, np.tile([1.0, 0, 0, 0], (len(cloud), 1)))
        # scale: sqrt of the mean squared distance to the 3 nearest other points, by brute force
        gaps = np.linalg.norm(cloud.positions[:, None].astype(np.float64) - cloud.positions[None], axis=2)
        np.fill_diagonal(gaps, np.inf)
        nearest = np.sort(gaps, axis=1)[:, :3]
        expected = np.sqrt(np.mean(nearest ** 2, axis=1))
        for axis in range(3):
            np.testing.assert_allclose(np.exp(vertex[f"scale_{axis}"]), expected, rtol=1e-5)


def test_splats_on_a_regular_grid_have_the_grid_spacing_and_degree_3_adds_zero_sh(tmp_path):
    grid = np.stack(np.meshgrid(np.arange(6), np.arange(5), [0.0], indexing="ij"), axis=-1).reshape(-1, 3) * 0.25
    cloud = PointCloud(grid.astype(np.float32), np.full((len(grid), 3), 200, np.uint8))
    interior = (grid[:, 0] > 0) & (grid[:, 0] < 1.25) & (grid[:, 1] > 0) & (grid[:, 1] < 1.0)
    np.testing.assert_allclose(point_spacing(cloud.positions)[interior], 0.25, rtol=1e-6)
    vertex = PlyData.read(str(write_splats(tmp_path / "s.ply", cloud, sh_degree=3)))["vertex"]
    assert [p.name for p in vertex.properties] == splat_properties(3)
    rest = [p.name for p in vertex.properties if p.name.startswith("f_rest_")]
    assert rest == [f"f_rest_{i}" for i in range(45)]  # what the original load_ply asserts at sh_degree 3
    assert all((vertex[name] == 0).all() for name in rest)
    np.testing.assert_allclose(np.exp(vertex["scale_0"][interior]), 0.25, rtol=1e-6)
    np.testing.assert_allclose(vertex["f_dc_0"], (200 / 255 - 0.5) / SH_C0, rtol=1e-6)
    single = PlyData.read(str(write_splats(tmp_path / "one.ply", cloud.select(np.array([0])))))["vertex"]
    assert single.count == 1 and np.isfinite(single["scale_0"]).all()


# ---------------------------------------------------------------- Rerun


def rerun_columns(path: Path) -> dict[tuple[str, str], list]:
    """Every logged component of an .rrd, by (entity path, column), with its frame-timeline rows."""
    from rerun.chunk import RrdReader

    columns: dict[tuple[str, str], list] = {}
    for chunk in RrdReader(path).stream():
        batch = chunk.to_record_batch()
        frames = batch.column("frame").to_pylist() if "frame" in batch.schema.names else [None] * batch.num_rows
        for name in batch.schema.names:
            if ":" in name:
                rows = columns.setdefault((chunk.entity_path, name), [])
                rows += list(zip(frames, batch.column(name).to_pylist(), strict=True))
    return {key: sorted(rows, key=lambda row: -1 if row[0] is None else row[0]) for key, rows in columns.items()}


def test_rerun_recording_holds_points_cameras_rgb_and_depth_per_frame(scene_dir, tmp_path):
    pytest.importorskip("rerun", reason="rerun-sdk (the 'rerun' extra) is not installed")
    out = export(scene_dir, tmp_path / "out", "--rerun", "--ply")
    scene = load_scene(scene_dir / "scene.npz")
    columns = rerun_columns(out / "points.rrd")
    assert columns[("/world", "ViewCoordinates:xyz")] == [(None, [[3, 2, 5]])]  # Right, Down, Forward
    for name in ("Points3D:positions", "Points3D:colors"):
        assert [frame for frame, _ in columns[("/world/points", name)]] == list(range(FRAMES))
    for frame in range(FRAMES):
        cloud = read_ply(out / "ply" / f"frame_{frame:05d}.ply")
        positions = np.array(columns[("/world/points", "Points3D:positions")][frame][1], np.float32)
        np.testing.assert_array_equal(positions, cloud.positions)
        packed = np.array(columns[("/world/points", "Points3D:colors")][frame][1], np.uint32)
        rgba = np.stack([(packed >> shift) & 255 for shift in (24, 16, 8, 0)], axis=1)
        np.testing.assert_array_equal(rgba[:, :3], cloud.colors)
        assert (rgba[:, 3] == 255).all()
        pose = scene.cams2world[frame].astype(np.float64)
        rotation = np.array(columns[("/world/camera", "Transform3D:mat3x3")][frame][1][0]).reshape(3, 3).T
        np.testing.assert_allclose(rotation, pose[:3, :3], rtol=0, atol=1e-6)  # stored column-major, float32
        translation = columns[("/world/camera", "Transform3D:translation")][frame][1][0]
        np.testing.assert_allclose(translation, pose[:3, 3], rtol=1e-6, atol=1e-7)
        K = np.array(columns[("/world/camera", "Pinhole:image_from_camera")][frame][1][0]).reshape(3, 3).T
        expected = scene.K.astype(np.float64).copy()
        expected[:2, 2] += 0.5  # Rerun's pixel centres, like COLMAP's
        np.testing.assert_allclose(K, expected, rtol=1e-6)
        assert columns[("/world/camera", "Pinhole:resolution")][frame][1] == [[WIDTH, HEIGHT]]
        rgb = np.array(columns[("/world/camera/rgb", "Image:buffer")][frame][1][0], np.uint8)
        np.testing.assert_array_equal(rgb.reshape(HEIGHT, WIDTH, 3), scene.rgb[frame])
        depth = np.array(columns[("/world/camera/depth", "DepthImage:buffer")][frame][1][0], np.uint8)
        np.testing.assert_array_equal(depth.view("<f4").reshape(HEIGHT, WIDTH),
                                      np.nan_to_num(frame_depth(scene, frame), nan=0.0, posinf=0.0))


# ---------------------------------------------------------------- Nerfstudio, and the command line


def test_nerfstudio_transforms_round_trip_with_times_images_and_initial_points(zoom_dir, tmp_path):
    out = export(zoom_dir, tmp_path / "out", "--cameras", "--ply")
    scene = load_scene(zoom_dir / "scene.npz")
    cameras, paths = read_transforms_json(out / "transforms.json")
    np.testing.assert_allclose(cameras.cams2world, scene.cams2world, rtol=0, atol=1e-7)
    np.testing.assert_allclose(cameras.K, scene.K, rtol=0, atol=1e-5)
    data = json.loads((out / "transforms.json").read_text())
    assert [frame["time"] for frame in data["frames"]] == pytest.approx(np.linspace(0, 1, FRAMES))
    assert [frame["fl_x"] for frame in data["frames"]] == pytest.approx(scene.K[:, 0, 0])
    for frame, path in enumerate(paths):
        np.testing.assert_array_equal(np.asarray(Image.open(out / path)), scene.rgb[frame])
    initial = read_ply(out / data["ply_file_path"])  # the frame-0 points, in the poses' world frame
    np.testing.assert_allclose(np.sort(initial.positions, axis=0), np.sort(frame_points(scene, 0)[0], axis=0),
                               rtol=0, atol=1e-6)


def test_every_format_at_once_and_an_earlier_export_is_refused(scene_dir, tmp_path, capsys):
    out = export(scene_dir, tmp_path / "out", "--all", "--max-points", "200")
    names = sorted(path.name for path in out.iterdir())
    expected = ["cameras.json", "images", "ply", "points.glb", "sparse", "splats", "transforms.json"]
    try:
        import rerun  # noqa: F401
        expected.append("points.rrd")
    except ImportError:
        pass
    assert names == sorted(expected)
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    assert main(["export", str(scene_dir), "--out", str(out), "--ply"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before
    assert main(["export", str(scene_dir), "--out", str(out), "--ply", "--overwrite"]) == 0


def first_frames(scene: Scene, count: int) -> Scene:
    """``scene`` cut to its first ``count`` frames (every per-frame array)."""
    return dataclasses.replace(scene, **{field.name: value[:count] for field in dataclasses.fields(scene)
                                         if isinstance(value := getattr(scene, field.name), np.ndarray)
                                         and value.ndim and value.shape[0] == scene.num_frames})


def test_overwrite_replaces_each_folder_of_frames_whole(scene_dir, tmp_path):
    """A 2-frame scene exported over a 4-frame one's export: no file of the earlier export is left among
    the new (frames 2 and 3, the text COLMAP model beside the binary one), and no hidden partial file."""
    out = export(scene_dir, tmp_path / "out", "--ply", "--splats", "--colmap", "text")
    shorter = tmp_path / "shorter"
    shorter.mkdir()
    save_scene(first_frames(load_scene(scene_dir / "scene.npz"), 2), shorter / "scene.npz")
    export(shorter, out, "--ply", "--splats", "--colmap", "binary", "--overwrite")
    for folder in ("ply", "splats"):
        assert sorted(path.name for path in (out / folder).iterdir()) == ["frame_00000.ply", "frame_00001.ply"]
    assert sorted(path.name for path in (out / "images").iterdir()) == ["frame_00000.png", "frame_00001.png"]
    assert sorted(path.name for path in (out / "sparse" / "0").iterdir()) == \
        ["cameras.bin", "images.bin", "points3D.bin"]
    assert pycolmap.Reconstruction(str(out / "sparse" / "0")).num_images() == 2
    assert not [path for path in out.rglob("*") if ".partial" in path.name]


def test_a_failed_export_leaves_the_earlier_one_and_no_half_folder(scene_dir, tmp_path):
    """Frame 2's cloud holds a NaN: the pass stops there; the earlier export's folders are as they were and
    neither a half-filled folder nor a partial file is left."""
    scene = load_scene(scene_dir / "scene.npz")
    out = export(scene_dir, tmp_path / "out", "--ply")
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    rng = np.random.default_rng(0)
    clouds = [PointCloud(rng.random((20, 3), dtype=np.float32), np.zeros((20, 3), np.uint8)) for _ in range(FRAMES)]
    clouds[2].positions[5] = np.nan
    paths = ExportPaths(ply=out / "ply", splats=out / "splats", glb=out / "points.glb")
    with pytest.raises(ValueError, match="non-finite positions"):
        export_scene(scene, clouds, paths, ExportOptions())
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before
    assert not (out / "splats").exists() and not (out / "points.glb").exists()


@pytest.mark.parametrize("flags, message", [
    (["--colmap-stride", "2"], "add --colmap"),
    (["--colmap", "--colmap-stride", "-1"], "stride must be >= 0"),
    (["--splat-sh-degree", "3"], "add --splats"),
    (["--colmap", "text"], "run `fourdnex postopt`"),
])
def test_bad_combinations_are_refused_before_anything_is_written(tmp_path, capsys, flags, message):
    scene = make_synthetic_scene(2, 12, 18, seed=2).to_scene_file()
    save_scene(Scene(scene.rgb, scene.xyz), tmp_path / "scene.npz")
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the 4DNeX Save node


def test_save_node_writes_every_format_under_the_output_folder_and_never_overwrites(scene_dir, tmp_path,
                                                                                     monkeypatch):
    import nodes
    from nodes.comfy_values import PointClouds

    from fourdnex_core.geometry.pointcloud import PointFilter

    monkeypatch.setenv("FOURDNEX_OUTPUT_DIR", str(tmp_path / "output"))
    scene = load_scene(scene_dir / "scene.npz")
    clouds = PointClouds(scene, PointFilter(depth_edge_rtol=None, outlier_std_ratio=None), max_points=300)
    save = nodes.NODE_CLASS_MAPPINGS["FourDNeXSave"]().save
    options = dict(filename_prefix="4dnex/all", save_scene=True, save_ply=True, save_glb=True, save_cameras=True,
                   fps=12.0, save_colmap="text", colmap_frame_stride=1, save_nerfstudio=True, save_splats=True,
                   save_rerun=True, splat_sh_degree=3)
    result = save(clouds, **options)
    folder = tmp_path / "output" / "4dnex"
    stem = "all_00001_"
    assert result["result"] == (f"4dnex/{stem}.npz",)
    assert set(result["ui"]["text"]) == {f"4dnex/{stem}{name}" for name in (
        ".npz", "ply", ".glb", "splats", ".rrd", "cameras.json", "dataset/images", "dataset/transforms.json",
        "dataset/sparse/0")}
    reconstruction = pycolmap.Reconstruction(str(folder / f"{stem}dataset" / "sparse" / "0"))
    assert reconstruction.num_images() == FRAMES and reconstruction.num_points3D() == 300  # the budget in all
    cameras, paths = read_transforms_json(folder / f"{stem}dataset" / "transforms.json")
    np.testing.assert_allclose(cameras.cams2world, scene.cams2world, rtol=0, atol=1e-7)
    assert all((folder / f"{stem}dataset" / path).is_file() for path in paths)
    ply_file = json.loads((folder / f"{stem}dataset" / "transforms.json").read_text())["ply_file_path"]
    assert len(read_ply(folder / f"{stem}dataset" / ply_file)) == 300
    assert len(list((folder / f"{stem}splats").glob("*.ply"))) == FRAMES
    splat_names = [p.name for p in PlyData.read(folder / f"{stem}splats" / "frame_00000.ply")["vertex"].properties]
    assert splat_names == splat_properties(3) and "f_rest_44" in splat_names
    before = sorted(path.relative_to(folder) for path in folder.rglob("*"))
    again = save(clouds, **options)
    assert again["result"] == ("4dnex/all_00002_.npz",)
    assert sorted(path.relative_to(folder) for path in folder.rglob("*") if "all_00001_" in path.name
                  or "all_00001_" in str(path.parent)) == before


def test_save_node_fps_0_writes_a_glb_without_animation(scene_dir, tmp_path, monkeypatch):
    """fps 0, as `fourdnex export --fps 0`: every frame's POINTS shown at once, no animation."""
    import nodes
    from nodes.comfy_values import PointClouds
    from pygltflib import GLTF2

    monkeypatch.setenv("FOURDNEX_OUTPUT_DIR", str(tmp_path / "output"))
    save = nodes.NODE_CLASS_MAPPINGS["FourDNeXSave"]().save
    clouds = PointClouds(load_scene(scene_dir / "scene.npz"), max_points=50)
    for fps in (0.0, 12.0):
        result = save(clouds, f"4dnex/fps{fps:g}", False, False, True, False, fps)
        glb = GLTF2().load(str(tmp_path / "output" / result["ui"]["text"][0]))
        assert len(glb.animations) == (0 if fps == 0 else 1) and len(glb.meshes) == FRAMES


def test_save_node_refuses_camera_formats_without_cameras_before_writing(tmp_path, monkeypatch):
    import nodes
    from nodes.comfy_values import PointClouds

    monkeypatch.setenv("FOURDNEX_OUTPUT_DIR", str(tmp_path / "output"))
    raw = make_synthetic_scene(2, 12, 18, seed=2).to_scene_file()
    save = nodes.NODE_CLASS_MAPPINGS["FourDNeXSave"]().save
    with pytest.raises(ValueError, match="no cameras"):
        save(PointClouds(Scene(raw.rgb, raw.xyz)), "4dnex/raw", True, True, True, True, 24.0, save_colmap="binary")
    assert not list((tmp_path / "output").rglob("*.*"))


def test_duplicate_points_get_the_original_floor_scale():
    """graphdeco-inria's create_from_pcd clamps the mean squared neighbour distance at 1e-7: five points at
    one place get log scale log(sqrt(1e-7)) = -8.06 as there (the distance clamped at 1e-7 gave -16.1)."""
    spacing = point_spacing(np.zeros((5, 3)))
    np.testing.assert_allclose(np.log(spacing), np.log(np.sqrt(1e-7)))
