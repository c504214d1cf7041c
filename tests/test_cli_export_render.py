"""``fourdnex export`` and ``fourdnex render`` on a small scene written to disk."""

import json

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from format_readers import read_glb, read_ply
from PIL import Image

from fourdnex_core.cli import build_parser, main
from fourdnex_core.cli.render import trajectory_cameras
from fourdnex_core.geometry.cameras import backproject
from fourdnex_core.geometry.export_cameras import read_cameras_json, read_transforms_json
from fourdnex_core.scene_file import Scene, load_scene, save_scene

FRAMES, H, W = 5, 24, 32
K = np.array([[28.0, 0.0, 15.5], [0.0, 28.0, 11.5], [0.0, 0.0, 1.0]], np.float32)
NO_FILTERS = ["--edge-rtol", "0", "--outlier-std", "0"]


def make_scene() -> Scene:
    """A wall at depth 3 with a square at depth 1.5 in front, seen by a camera sliding right."""
    rng = np.random.default_rng(0)
    depth = np.full((FRAMES, H, W), 3.0, np.float32)
    depth[:, 8:16, 10:20] = 1.5
    poses = np.stack([np.eye(4, dtype=np.float32)] * FRAMES)
    poses[:, 0, 3] = np.linspace(0.0, 0.2, FRAMES)
    xyz = backproject(torch.from_numpy(depth), torch.from_numpy(K), torch.from_numpy(poses)).numpy()
    rgb = rng.integers(0, 256, (FRAMES, H, W, 3), dtype=np.uint8)
    return Scene(rgb, xyz, depth, K, poses, np.ones((FRAMES, H, W), bool), np.zeros(FRAMES, np.float32))


@pytest.fixture
def scene_dir(tmp_path):
    save_scene(make_scene(), tmp_path / "scene" / "scene.npz")
    return tmp_path / "scene"


@pytest.fixture
def points_only_dir(tmp_path):
    scene = make_scene()
    save_scene(Scene(scene.rgb, scene.xyz), tmp_path / "raw" / "scene.npz")
    return tmp_path / "raw"


def test_export_writes_every_format_that_reads_back(scene_dir):
    assert main(["export", str(scene_dir), "--max-points", "0"]) == 0
    out = scene_dir / "export"
    scene = make_scene()
    ply_files = sorted((out / "ply").glob("*.ply"))
    assert [path.name for path in ply_files] == [f"frame_{i:05d}.ply" for i in range(FRAMES)]
    glb_clouds = read_glb(out / "points.glb")
    assert len(glb_clouds) == FRAMES
    for index, (path, from_glb) in enumerate(zip(ply_files, glb_clouds, strict=True)):
        from_ply = read_ply(path)
        assert 0.8 * H * W < len(from_ply) < H * W  # depth edges around the square are filtered
        np.testing.assert_array_equal(from_ply.positions, from_glb.positions)
        np.testing.assert_array_equal(from_ply.colors, from_glb.colors)
        colours_seen = {tuple(c) for c in scene.rgb[index].reshape(-1, 3)}
        assert all(tuple(c) in colours_seen for c in from_ply.colors[:50])
    cameras = read_cameras_json(out / "cameras.json")
    np.testing.assert_allclose(cameras.cams2world, scene.cams2world, atol=1e-7)
    np.testing.assert_allclose(cameras.K, scene.K)
    transforms, image_paths = read_transforms_json(out / "transforms.json")
    np.testing.assert_allclose(transforms.cams2world, scene.cams2world, atol=1e-7)
    assert json.loads((out / "transforms.json").read_text())["ply_file_path"] == "ply/frame_00000.ply"
    for index, relative in enumerate(image_paths):
        np.testing.assert_array_equal(np.asarray(Image.open(out / relative)), scene.rgb[index])


def test_export_chosen_formats_with_a_voxel_budget(scene_dir, tmp_path):
    out = tmp_path / "chosen"
    assert main(["export", str(scene_dir), "--ply", "--max-points", "60", "--downsample", "voxel",
                 "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["ply"]
    for path in (out / "ply").iterdir():
        assert 30 <= len(read_ply(path)) <= 60


def test_export_of_a_scene_without_cameras(points_only_dir, capsys):
    assert main(["export", str(points_only_dir), *NO_FILTERS]) == 0
    out = points_only_dir / "export"
    assert sorted(path.name for path in out.iterdir()) == ["ply", "points.glb"]
    assert len(read_glb(out / "points.glb")[0]) == H * W
    assert main(["export", str(points_only_dir), "--cameras"]) == 2
    assert "fourdnex postopt" in capsys.readouterr().err


def test_render_along_the_recovered_path_reproduces_the_input_frames(scene_dir):
    assert main(["render", str(scene_dir), "--trajectory", "path", "--device", "cpu", *NO_FILTERS]) == 0
    out = scene_dir / "render"
    scene = make_scene()
    frames = sorted((out / "frames").glob("*.png"))
    assert len(frames) == FRAMES
    for index, path in enumerate(frames):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), scene.rgb[index])
    reader = imageio.get_reader(out / "render.mp4", format="FFMPEG")
    assert reader.count_frames() == FRAMES
    assert reader.get_data(0).shape == (H, W, 3)
    reader.close()


def test_render_orbit_at_another_size_without_frames(scene_dir, tmp_path):
    out = tmp_path / "orbit"
    assert main(["render", str(scene_dir), "--trajectory", "orbit", "--num-frames", "4", "--width", "48",
                 "--height", "24", "--point-size", "2", "--background", "1", "1", "1", "--no-frames",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["render.mp4"]
    reader = imageio.get_reader(out / "render.mp4", format="FFMPEG")
    frames = [frame for frame in reader]
    reader.close()
    assert len(frames) == 4 and frames[0].shape == (24, 48, 3)
    for frame in frames:  # the 32-pixel-wide view leaves white side bands (random scene colours are rarely white)
        assert (frame.min(axis=2) > 240).mean() > 0.25
    assert np.abs(frames[0].astype(int) - frames[-1]).mean() > 20  # the camera moved


def test_render_user_poses_works_without_recovered_cameras(scene_dir, points_only_dir, tmp_path):
    assert main(["export", str(scene_dir), "--cameras"]) == 0
    out = tmp_path / "poses"
    assert main(["render", str(points_only_dir), "--trajectory", "poses", "--poses",
                 str(scene_dir / "export" / "cameras.json"), "--time-frame", "2", "--device", "cpu",
                 "--out", str(out), *NO_FILTERS]) == 0
    rendered = np.asarray(Image.open(out / "frames" / "frame_00002.png"))
    np.testing.assert_array_equal(rendered, make_scene().rgb[2])


def test_render_masks_are_the_uncovered_pixels_and_depth_the_scene_geometry(scene_dir, tmp_path):
    out = tmp_path / "masks"
    argv = ["render", str(scene_dir), "--trajectory", "path-offset", "--offset", "0.05", "0", "0", "--masks",
            "--device", "cpu", "--out", str(out), *NO_FILTERS]
    assert main(argv) == 0
    assert sorted(path.name for path in out.iterdir()) == ["depth.mp4", "depth.npz", "frames", "masks", "masks.mp4",
                                                           "render.mp4"]
    with np.load(out / "depth.npz") as saved:
        depth = saved["depth"]
    assert depth.shape == (FRAMES, H, W) and depth.dtype == np.float32
    # 0.05 median depths (3.0) to the right: the wall (depth 3) moves 28 * 0.15 / 3 = 1.4 px left, the square
    # (depth 1.5) 2.8 px: the wall's last column and the two columns the square uncovers at its right edge
    # (rows 8..15) are seen by no point: 24 + 2 * 8 pixels per view
    expected_holes = np.zeros((H, W), bool)
    expected_holes[:, W - 1] = True
    expected_holes[8:16, 17:19] = True
    for index in range(FRAMES):
        mask = np.asarray(Image.open(out / "masks" / f"frame_{index:05d}.png"))
        np.testing.assert_array_equal(mask, np.where(expected_holes, 255, 0)[..., None].repeat(3, -1))
        np.testing.assert_array_equal(np.isinf(depth[index]), expected_holes)
        square = np.zeros((H, W), bool)
        square[8:16, 7:17] = True
        np.testing.assert_allclose(depth[index][square], 1.5, rtol=1e-5)
        np.testing.assert_allclose(depth[index][~square & ~expected_holes], 3.0, rtol=1e-5)
    for name in ("masks.mp4", "depth.mp4"):
        reader = imageio.get_reader(out / name, format="FFMPEG")
        decoded = np.stack([frame for frame in reader])
        reader.close()
        assert decoded.shape == (FRAMES, H, W, 3)
    assert decoded[0][expected_holes].max() < 40 and decoded[0][square].min() > 200  # depth: holes black, near white

    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    assert main(argv) == 2  # an earlier render is never replaced unless asked
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before
    assert main([*argv, "--overwrite", "--no-frames"]) == 0
    assert (out / "depth.npz").stat().st_mtime_ns > before["depth.npz"]


def test_render_trajectories_are_in_units_of_the_median_depth(scene_dir):
    """The library's trajectories with the scene's median depth (3.0: the wall fills most of frame 0)."""
    scene = load_scene(scene_dir / "scene.npz")
    parser = build_parser()

    def cameras(*options):
        args = parser.parse_args(["render", str(scene_dir), *options])
        return trajectory_cameras(args, scene, scene_dir / "scene.npz").cams2world

    dolly = cameras("--trajectory", "dolly", "--num-frames", "3", "--distance", "0.5")
    np.testing.assert_allclose(dolly[:, :3, 3], [[0, 0, 0], [0, 0, 0.75], [0, 0, 1.5]], atol=1e-6)
    shifted = cameras("--trajectory", "path-offset", "--offset", "0.1", "0", "-0.2")
    np.testing.assert_allclose(shifted[:, :3, 3] - scene.cams2world[:, :3, 3], [[0.3, 0, -0.6]] * FRAMES, atol=1e-6)
    orbit = cameras("--trajectory", "orbit", "--num-frames", "5", "--arc-degrees", "90")
    np.testing.assert_allclose(orbit[2], scene.cams2world[0], atol=1e-6)  # the middle view is the first camera
    np.testing.assert_allclose(np.linalg.norm(orbit[:, :3, 3] - [0, 0, 3.0], axis=1), 3.0, rtol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["render", "{raw}", "--trajectory", "orbit"], "run `fourdnex postopt`"),
    (["render", "{scene}", "--trajectory", "poses"], "needs --poses"),
    (["render", "{scene}", "--time-frame", "9"], "--time-frame must be in 0..4"),
    (["render", "{scene}", "--background", "0", "2", "0"], "in [0, 1]"),
    (["export", "{missing}"], "No scene folder"),
    (["export", "{bad}"], "is not a scene .npz file"),
])
def test_cli_errors_name_the_problem(argv, message, scene_dir, points_only_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "scene.npz").write_bytes(b"not a zip file")
    paths = {"raw": points_only_dir, "scene": scene_dir, "missing": tmp_path / "missing", "bad": bad}
    assert main([arg.format(**paths) for arg in argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("broken", "message"), [
    ("nan", "holds no usable point (every xyz is NaN or infinite or masked out)"),
    ("masked", "holds no usable point (every xyz is NaN or infinite or masked out)"),
    ("zero", "sit at one place (0.0, 0.0, 0.0)"),
])
@pytest.mark.parametrize("command", ["export", "render"])
def test_an_empty_scene_is_an_error_not_zero_points(tmp_path, capsys, broken, message, command):
    scene = make_scene()
    if broken == "nan":
        scene.xyz[:] = np.nan
    elif broken == "masked":
        scene.mask[:] = False
    else:
        scene.xyz[:] = 0.0
        scene.depth, scene.K, scene.cams2world = None, None, None
        scene.residuals = None
    save_scene(scene, tmp_path / "scene.npz")
    assert main([command, str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
