"""Synthetic 4D scenes: pixel alignment, ground truth, corruptions, determinism, file round trip."""

import re

import numpy as np
import pytest
import torch

from fourdnex_core.geometry.cameras import backproject, pixel_grid, project
from fourdnex_core.geometry.synthetic import make_synthetic_scene
from fourdnex_core.scene_file import Scene, load_scene, save_scene

FRAMES, HEIGHT, WIDTH = 5, 24, 36


@pytest.fixture(scope="module")
def clean_scene():
    return make_synthetic_scene(FRAMES, HEIGHT, WIDTH, seed=7, dtype=torch.float64)


def test_shapes_dtypes_and_ranges(clean_scene):
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, seed=7)
    assert scene.rgb.shape == scene.xyz.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert scene.depth.shape == scene.valid.shape == scene.outliers.shape == scene.moving.shape == (FRAMES, HEIGHT, WIDTH)
    assert scene.K.shape == (3, 3) and scene.cams2world.shape == (FRAMES, 4, 4)
    assert scene.rgb.dtype == scene.xyz.dtype == torch.float32
    assert 0.0 <= float(scene.rgb.min()) and float(scene.rgb.max()) <= 1.0
    assert float(scene.rgb.std()) > 0.05, "frames should show a scene, not a flat colour"
    assert bool((clean_scene.depth > 0).all()), "every pixel sees a surface in front of the camera"
    assert bool(scene.valid.all()) and not bool(scene.outliers.any())


def test_first_camera_is_the_world_frame_and_poses_are_rigid(clean_scene):
    cams = clean_scene.cams2world
    torch.testing.assert_close(cams[0], torch.eye(4, dtype=torch.float64))
    rotations = cams[:, :3, :3]
    torch.testing.assert_close(rotations.transpose(1, 2) @ rotations, torch.eye(3, dtype=torch.float64).expand(FRAMES, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(FRAMES, dtype=torch.float64))
    assert float(cams[-1, :3, 3].norm()) > 0.5, "the camera should move"
    static = make_synthetic_scene(3, HEIGHT, WIDTH, camera_motion=0.0, dtype=torch.float64)
    torch.testing.assert_close(static.cams2world, torch.eye(4, dtype=torch.float64).expand(3, 4, 4))


def test_xyz_is_pixel_aligned_with_depth(clean_scene):
    """Projecting each pixel's point with the true camera lands on that pixel at the true depth."""
    points = clean_scene.xyz.reshape(FRAMES, -1, 3)
    uv, depth = project(points, clean_scene.K, clean_scene.cams2world)
    expected_uv = pixel_grid(HEIGHT, WIDTH, dtype=torch.float64).reshape(1, -1, 2).expand_as(uv)
    torch.testing.assert_close(uv, expected_uv, atol=1e-9, rtol=0)
    torch.testing.assert_close(depth, clean_scene.depth.reshape(FRAMES, -1), atol=1e-9, rtol=1e-12)
    # Independently of the helpers: x_cam = (u - cx) / fx * depth for the first (identity) camera.
    fx, cx = clean_scene.K[0, 0], clean_scene.K[0, 2]
    u = torch.arange(WIDTH, dtype=torch.float64)
    torch.testing.assert_close(clean_scene.xyz[0, ..., 0], (u - cx) / fx * clean_scene.depth[0])


def test_static_surfaces_stay_put_and_moving_objects_move():
    scene = make_synthetic_scene(4, HEIGHT, WIDTH, camera_motion=0.0, seed=3, dtype=torch.float64)
    assert bool(scene.moving.any()), "some pixels should see a moving object"
    both_static = ~scene.moving[0] & ~scene.moving[-1]
    torch.testing.assert_close(scene.xyz[-1][both_static], scene.xyz[0][both_static])
    changed = (scene.xyz[-1] - scene.xyz[0]).norm(dim=-1) > 1e-6
    assert bool((changed & (scene.moving[0] | scene.moving[-1])).any())
    assert not bool((changed & both_static).any())


def test_principal_point_and_focal_options():
    scene = make_synthetic_scene(2, HEIGHT, WIDTH, focal=50.0, principal_point=(20.0, 10.0), dtype=torch.float64)
    expected = torch.tensor([[50.0, 0.0, 20.0], [0.0, 50.0, 10.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(scene.K, expected)
    torch.testing.assert_close(scene.xyz, backproject(scene.depth, scene.K, scene.cams2world))


def test_noise_outliers_and_invalid_pixels():
    noise, outlier_fraction, invalid_fraction = 0.02, 0.1, 0.05
    scene = make_synthetic_scene(4, 40, 60, noise=noise, outlier_fraction=outlier_fraction,
                                 invalid_fraction=invalid_fraction, seed=11, dtype=torch.float64)
    clean = scene.clean_xyz()
    assert abs(float((~scene.valid).double().mean()) - invalid_fraction) < 0.015
    assert abs(float(scene.outliers.double().mean()) - outlier_fraction) < 0.02
    assert not bool((scene.outliers & ~scene.valid).any())

    invalid_points = scene.xyz[~scene.valid]
    assert not bool(torch.isfinite(invalid_points).all(dim=-1).any()), "every invalid pixel holds a NaN or inf"
    assert bool(torch.isfinite(scene.xyz[scene.valid]).all())

    inliers = scene.valid & ~scene.outliers
    relative = (scene.xyz - clean)[inliers] / scene.depth[inliers][:, None]
    assert abs(float(relative.std()) - noise) < 0.1 * noise, "noise std is the requested share of depth"

    thrown = (scene.xyz - clean)[scene.outliers].norm(dim=-1) / scene.depth[scene.outliers]
    assert float(thrown.min()) >= 0.2 - 5 * noise and float(thrown.max()) <= 1.0 + 5 * noise


def test_seed_makes_scenes_reproducible():
    first = make_synthetic_scene(2, HEIGHT, WIDTH, noise=0.01, outlier_fraction=0.05, seed=5)
    again = make_synthetic_scene(2, HEIGHT, WIDTH, noise=0.01, outlier_fraction=0.05, seed=5)
    other = make_synthetic_scene(2, HEIGHT, WIDTH, noise=0.01, outlier_fraction=0.05, seed=6)
    torch.testing.assert_close(first.xyz, again.xyz, equal_nan=True)
    torch.testing.assert_close(first.rgb, again.rgb)
    assert not torch.allclose(first.xyz, other.xyz)


def test_scene_file_round_trip(tmp_path):
    scene = make_synthetic_scene(2, HEIGHT, WIDTH, invalid_fraction=0.1, seed=2)
    path = save_scene(scene.to_scene_file(), tmp_path / "scene.npz")
    loaded = load_scene(path)
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (2, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(loaded.xyz, scene.xyz.numpy())
    np.testing.assert_allclose(loaded.rgb / 255.0, scene.rgb.numpy(), atol=0.5 / 255 + 1e-6)
    assert loaded.depth is None and loaded.K is None, "cameras are post-optimization's job"


def full_scene(frames: int = 2) -> Scene:
    """A scene with every array of scene.npz set to distinct random values."""
    rng = np.random.default_rng(0)
    shape = (frames, HEIGHT, WIDTH)
    return Scene(rgb=rng.integers(0, 256, (*shape, 3), dtype=np.uint8),
                 xyz=rng.normal(size=(*shape, 3)).astype(np.float32), depth=rng.random(shape, np.float32),
                 K=rng.random((3, 3), np.float32), cams2world=rng.random((frames, 4, 4), np.float32),
                 mask=rng.random(shape) > 0.3, residuals=rng.random(frames, np.float32),
                 confidence=rng.random(shape, np.float32))


def test_scene_file_round_trips_every_array(tmp_path):
    scene = full_scene()
    loaded = load_scene(save_scene(scene, tmp_path / "scene.npz"))
    for key, value in scene.arrays().items():
        restored = getattr(loaded, key)
        assert restored.dtype == value.dtype, key
        np.testing.assert_array_equal(restored, value, err_msg=key)


def test_scene_confidence_shape_is_checked():
    scene = full_scene()
    with pytest.raises(ValueError, match=re.escape(f"Scene.confidence must have shape (2, {HEIGHT}, {WIDTH})")):
        Scene(rgb=scene.rgb, xyz=scene.xyz, confidence=scene.confidence[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rgb": lambda scene: scene.rgb / 255.0}, "rgb must be uint8 [F, H, W, 3] with values 0..255, got float64"),
        ({"rgb": lambda scene: scene.rgb.astype(np.int32)}, "rgb must be uint8"),
        ({"xyz": lambda scene: scene.xyz.astype(np.int16)}, "xyz must be floating point"),
        ({"confidence": lambda scene: (scene.confidence * 10).astype(np.uint8)}, "confidence must be floating point"),
        ({"mask": lambda scene: scene.mask.astype(np.uint8)}, "mask must be bool"),
    ],
)
def test_scene_file_with_wrong_dtypes_is_refused_with_the_fix(tmp_path, change, message):
    arrays = full_scene().arrays()
    (key, make), = change.items()
    arrays[key] = make(full_scene())
    path = tmp_path / "scene.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        load_scene(path)
    if key == "rgb" and "float" in message:
        assert "Convert it to uint8 0..255" in str(error.value) and "* 255" in str(error.value)


def test_scene_file_with_a_pickled_object_array_is_refused(tmp_path):
    arrays = full_scene().arrays()
    arrays["xyz"] = np.array([{"not": "an array"}], dtype=object)
    path = tmp_path / "scene.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="pickled"):
        load_scene(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 0}, "num_frames >= 1"),
        ({"noise": -0.1}, "noise"),
        ({"outlier_fraction": 1.5}, "outlier_fraction must be in [0, 1)"),
        ({"outlier_fraction": 0.6, "invalid_fraction": 0.5}, "leave some clean pixels"),
        ({"focal": 0.0}, "focal must be a positive"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    arguments = {"num_frames": 2, "height": HEIGHT, "width": WIDTH, **kwargs}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        make_synthetic_scene(**arguments)
