"""``fourdnex postopt DIR`` on real scene.npz files."""

import dataclasses

import numpy as np
import pytest
import torch

from fourdnex_core.cli import main
from fourdnex_core.geometry.cameras import rotation_angle_degrees
from fourdnex_core.geometry.synthetic import make_synthetic_scene
from fourdnex_core.scene_file import Scene, load_scene, save_scene

FRAMES, HEIGHT, WIDTH = 4, 24, 36


@pytest.fixture()
def scene_dir(tmp_path):
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, invalid_fraction=0.02, seed=21)
    save_scene(scene.to_scene_file(), tmp_path / "scene.npz")
    return tmp_path, scene


def test_postopt_adds_cameras_depth_and_residuals(scene_dir, capsys):
    directory, truth = scene_dir
    assert main(["postopt", str(directory)]) == 0
    written = load_scene(directory / "scene.npz")
    np.testing.assert_array_equal(written.xyz, truth.xyz.numpy())
    assert written.depth.shape == (FRAMES, HEIGHT, WIDTH) and written.residuals.shape == (FRAMES,)
    np.testing.assert_allclose(written.K, truth.K.numpy(), rtol=1e-4, atol=1e-3)
    angles = rotation_angle_degrees(torch.from_numpy(written.cams2world[:, :3, :3]).double(),
                                    truth.cams2world[:, :3, :3].double())
    assert float(angles.max()) < 0.01
    np.testing.assert_array_equal(written.valid, truth.valid.numpy())
    assert written.mask is None  # an input array: postopt never adds or changes it
    valid = written.valid
    np.testing.assert_allclose(written.depth[valid], truth.depth.numpy()[valid], rtol=1e-3)
    output = capsys.readouterr().out
    assert f"post-optimized {FRAMES} frames of {HEIGHT}x{WIDTH}" in output and "fx" in output
    assert f"points left out (non-finite or masked): {int((~truth.valid).sum())}" in output


def test_existing_mask_is_respected(scene_dir):
    directory, truth = scene_dir
    scene = load_scene(directory / "scene.npz")
    mask = np.ones((FRAMES, HEIGHT, WIDTH), dtype=bool)
    mask[:, :, : WIDTH // 3] = False
    save_scene(Scene(rgb=scene.rgb, xyz=scene.xyz, mask=mask), directory / "scene.npz")
    assert main(["postopt", str(directory)]) == 0
    written = load_scene(directory / "scene.npz")
    np.testing.assert_array_equal(written.valid, mask & truth.valid.numpy())
    np.testing.assert_array_equal(written.mask, mask)
    assert (written.depth[~written.valid] == 0).all()


def test_known_focal_and_free_principal_point_options(scene_dir):
    directory, truth = scene_dir
    focal = float(truth.K[0, 0]) * 1.05
    assert main(["postopt", str(directory), "--focal", str(focal), "--robust", "huber"]) == 0
    written = load_scene(directory / "scene.npz")
    assert written.K[0, 0] == pytest.approx(focal) and written.K[1, 1] == pytest.approx(focal)
    assert main(["postopt", str(directory), "--free-principal-point"]) == 0
    np.testing.assert_allclose(load_scene(directory / "scene.npz").K, truth.K.numpy(), rtol=1e-4, atol=1e-3)


def test_npz_path_works_like_its_folder_and_shows_a_progress_bar(scene_dir, capsys):
    directory, truth = scene_dir
    path = directory / "scene.npz"
    assert main(["postopt", str(path)]) == 0
    written = load_scene(path)
    np.testing.assert_allclose(written.K, truth.K.numpy(), rtol=1e-4, atol=1e-3)
    assert "post-optimization" in capsys.readouterr().err, "the LM iterations show a tqdm bar"


def test_scene_confidence_weights_points_and_min_confidence_drops_them(tmp_path):
    truth = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, noise=0.005, outlier_fraction=0.5, seed=4)
    confidence = np.where(truth.outliers.numpy(), 0.01, 1.0).astype(np.float32)
    confidence[:, 0, :] = 0.0
    path = tmp_path / "scene.npz"
    save_scene(dataclasses.replace(truth.to_scene_file(), confidence=confidence), path)
    assert main(["postopt", str(path)]) == 0
    written = load_scene(path)
    np.testing.assert_array_equal(written.confidence, confidence)
    np.testing.assert_array_equal(written.valid, confidence > 0)
    angles = rotation_angle_degrees(torch.from_numpy(written.cams2world[:, :3, :3]).double(),
                                    truth.cams2world[:, :3, :3].double())
    assert float(angles.max()) < 0.5
    assert main(["postopt", str(path), "--min-confidence", "0.5"]) == 0
    np.testing.assert_array_equal(load_scene(path).valid, confidence >= 0.5)


def test_points_dropped_by_one_run_come_back_in_the_next(tmp_path):
    """postopt changes only derived arrays: the inputs are byte-identical after any number of runs."""
    truth = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, seed=5)
    confidence = np.random.default_rng(0).uniform(0.0, 1.0, (FRAMES, HEIGHT, WIDTH)).astype(np.float32)
    mask = np.ones((FRAMES, HEIGHT, WIDTH), bool)
    mask[:, -2:] = False
    path = tmp_path / "scene.npz"
    save_scene(dataclasses.replace(truth.to_scene_file(), confidence=confidence, mask=mask), path)
    inputs = {key: value.copy() for key, value in load_scene(path).arrays().items()}
    assert main(["postopt", str(path), "--min-confidence", "0.9"]) == 0
    strict = load_scene(path)
    assert strict.valid.sum() < 0.15 * strict.valid.size
    assert main(["postopt", str(path)]) == 0
    again = load_scene(path)
    np.testing.assert_array_equal(again.valid, mask & (confidence > 0) & truth.valid.numpy())
    assert (again.depth[again.valid] > 0).all()  # the dropped points have depth again
    for key, value in inputs.items():
        np.testing.assert_array_equal(getattr(again, key), value, err_msg=key)


def test_min_confidence_without_a_confidence_array_is_an_error(scene_dir, capsys):
    directory, _ = scene_dir
    assert main(["postopt", str(directory), "--min-confidence", "0.5"]) == 2
    assert "needs a confidence array" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("setup", "arguments", "message"),
    [
        (None, [], "No scene folder"),
        ("empty", [], "No scene file"),
        ("garbage", [], "is not a scene .npz file"),
        ("all_nan", [], "holds no usable point (every xyz is NaN or infinite)"),
        ("all_zero", [], "sit at one place (0.0, 0.0, 0.0)"),
    ],
)
def test_missing_or_malformed_input_gives_a_clear_error(tmp_path, capsys, setup, arguments, message):
    directory = tmp_path / "scene_dir"
    if setup is not None:
        directory.mkdir()
    if setup == "garbage":
        (directory / "scene.npz").write_bytes(b"not a zip file")
    if setup in ("all_nan", "all_zero", "good"):
        scene = make_synthetic_scene(2, 12, 18, seed=22).to_scene_file()
        if setup == "all_nan":
            scene.xyz[:] = np.nan
        if setup == "all_zero":
            scene.xyz[:] = 0.0
        save_scene(scene, directory / "scene.npz")
    assert main(["postopt", str(directory), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_a_zooming_scene_gets_a_k_per_frame_through_export_and_render(tmp_path, capsys):
    truth = make_synthetic_scene(6, HEIGHT, WIDTH, zoom=1.4, seed=27)
    save_scene(truth.to_scene_file(), tmp_path / "scene.npz")
    assert main(["postopt", str(tmp_path)]) == 0
    assert "camera model: a focal per frame (zoom)" in capsys.readouterr().out
    written = load_scene(tmp_path / "scene.npz")
    assert written.K.shape == (6, 3, 3)
    np.testing.assert_allclose(written.K, truth.intrinsics.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(written.depth[written.valid], truth.depth.numpy()[written.valid], rtol=1e-3)
    assert main(["export", str(tmp_path), "--cameras", "--out", str(tmp_path / "export")]) == 0
    from fourdnex_core.geometry.export_cameras import read_cameras_json
    np.testing.assert_allclose(read_cameras_json(tmp_path / "export" / "cameras.json").K, written.K, rtol=1e-6)
    assert main(["postopt", str(tmp_path), "--zoom", "no", "--principal-point", "centre"]) == 0
    assert load_scene(tmp_path / "scene.npz").K.shape == (3, 3)
