"""One way to build a ``Scene`` (the CLI and the nodes write the same scene.npz, ``xyz`` always the
generated point maps), its file versions, and one way to get a scene's cameras as a CameraSet."""

from pathlib import Path

import numpy as np
import pytest
import torch

import nodes
from fourdnex_core.cli import main
from fourdnex_core.geometry.point_maps import PointMaps, camera_set, point_maps_from_scene, scene_from
from fourdnex_core.geometry.pointcloud import frame_points
from fourdnex_core.geometry.synthetic import make_synthetic_scene
from fourdnex_core.scene_file import SCENE_VERSION, Scene, load_scene, save_scene

ROOT = Path(__file__).resolve().parents[1]
FRAMES, HEIGHT, WIDTH = 4, 24, 36
DERIVED = ("depth", "K", "cams2world", "residuals", "valid")


def node(name: str, **kwargs):
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)(**kwargs)


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic_scene(FRAMES, HEIGHT, WIDTH, invalid_fraction=0.02, seed=41)


@pytest.fixture(scope="module")
def node_path(synthetic):
    """Post-Optimize and Point Clouds as the example workflows wire them (the registered point maps)."""
    cameras, _, _, registered = node("FourDNeXPostOptimize", point_maps=PointMaps(xyz=synthetic.xyz, rgb=synthetic.rgb),
                                     iterations=20, robust="cauchy", focal=0.0, camera_model="auto")
    (clouds,) = node("FourDNeXPointClouds", point_maps=registered, max_points=0, downsample="stride", edge_rtol=0.0,
                     outlier_std=0.0, use_mask=True, cameras=cameras)
    return cameras, registered, clouds.scene


def test_the_node_path_and_fourdnex_postopt_write_the_same_scene(synthetic, node_path, tmp_path):
    _, registered, from_nodes = node_path
    save_scene(synthetic.to_scene_file(), tmp_path / "scene.npz")
    assert main(["postopt", str(tmp_path)]) == 0
    from_cli = load_scene(tmp_path / "scene.npz")
    from_nodes = load_scene(save_scene(from_nodes, tmp_path / "nodes.npz"))
    assert sorted(from_nodes.arrays()) == sorted(from_cli.arrays()) == sorted(["rgb", "xyz", *DERIVED])
    np.testing.assert_array_equal(from_nodes.rgb, from_cli.rgb)
    np.testing.assert_array_equal(from_nodes.xyz, synthetic.xyz.numpy())  # the generated points, as the CLI keeps
    np.testing.assert_array_equal(from_cli.xyz, synthetic.xyz.numpy())
    np.testing.assert_array_equal(from_nodes.valid, from_cli.valid)
    for key in ("depth", "K", "cams2world", "residuals"):
        np.testing.assert_allclose(getattr(from_nodes, key), getattr(from_cli, key), rtol=1e-5, atol=1e-5, err_msg=key)
    # the registered points are not stored: they are the depth through K and cams2world
    assert not np.allclose(registered.xyz.numpy(), synthetic.xyz.numpy(), atol=1e-3)  # noise and outliers
    for frame in range(FRAMES):
        valid = from_nodes.valid[frame]
        np.testing.assert_allclose(frame_points(from_nodes, frame)[valid], registered.xyz[frame].numpy()[valid],
                                   rtol=1e-4, atol=1e-4)


def test_registered_point_maps_bring_their_cameras_and_loaded_ones_round_trip(synthetic, node_path):
    cameras, registered, with_cameras = node_path
    alone = scene_from(registered)  # without the cameras input, still the generated points and the fit
    for key, value in with_cameras.arrays().items():
        np.testing.assert_array_equal(alone.arrays()[key], value, err_msg=key)
    maps, loaded = point_maps_from_scene(with_cameras)
    assert maps.mask is None and torch.equal(loaded.valid, cameras.valid)  # inputs and derived kept apart
    again = scene_from(maps, loaded)
    for key, value in with_cameras.arrays().items():
        np.testing.assert_array_equal(again.arrays()[key], value, err_msg=key)
    with pytest.raises(ValueError, match="cameras belong to frames of"):
        scene_from(PointMaps(xyz=synthetic.xyz[:2], rgb=synthetic.rgb[:2]), cameras)


def test_save_writes_the_version_and_reads_a_version_1_node_file_with_its_mask_as_valid(synthetic, node_path,
                                                                                        tmp_path):
    _, registered, scene = node_path
    with np.load(save_scene(scene, tmp_path / "v2.npz")) as data:
        assert int(data["version"]) == SCENE_VERSION == 2
    # what 4DNeX Save wrote before: the registered points in xyz, the fit's selection in mask, no valid
    old = {key: value for key, value in scene.arrays().items() if key != "valid"}
    old.update(xyz=registered.xyz.numpy(), mask=registered.mask.numpy())
    np.savez_compressed(tmp_path / "v1.npz", **old)
    read = load_scene(tmp_path / "v1.npz")
    assert read.mask is None
    np.testing.assert_array_equal(read.valid, registered.mask.numpy())
    np.testing.assert_array_equal(read.point_mask(), scene.point_mask())  # the same points shown
    # a new post-optimization starts from every point, not the old run's selection
    half = np.zeros_like(old["mask"])
    half[:, : HEIGHT // 2] = True
    np.savez_compressed(tmp_path / "half.npz", **{**old, "mask": half})
    assert main(["postopt", str(tmp_path / "half.npz")]) == 0
    assert load_scene(tmp_path / "half.npz").valid[:, HEIGHT // 2:].any()


def test_other_version_1_files_read_as_they_are(synthetic, tmp_path):
    inputs = synthetic.to_scene_file()
    user_mask = np.ones((FRAMES, HEIGHT, WIDTH), bool)
    user_mask[:, 0] = False
    np.savez_compressed(tmp_path / "generated.npz", rgb=inputs.rgb, xyz=inputs.xyz, mask=user_mask)
    assert load_scene(tmp_path / "generated.npz").valid is None  # no cameras: the mask is the user's
    np.testing.assert_array_equal(load_scene(tmp_path / "generated.npz").mask, user_mask)
    save_scene(Scene(rgb=inputs.rgb, xyz=inputs.xyz, mask=user_mask), tmp_path / "scene.npz")
    assert main(["postopt", str(tmp_path)]) == 0
    written = dict(np.load(tmp_path / "scene.npz"))
    written.pop("version")
    np.savez_compressed(tmp_path / "cli_v1.npz", **written)  # fourdnex postopt before the version: valid apart
    read = load_scene(tmp_path / "cli_v1.npz")
    np.testing.assert_array_equal(read.mask, user_mask)
    np.testing.assert_array_equal(read.valid, written["valid"])


@pytest.mark.parametrize(("version", "message"), [(np.int32(3), "version-3 scene file; this pack reads versions 1 "
                                                   "to 2. Update"), (np.float32(2.0), "version must be one integer"),
                                                  (np.array([2, 2]), "version must be one integer")])
def test_a_newer_or_malformed_version_is_refused(synthetic, tmp_path, version, message):
    inputs = synthetic.to_scene_file()
    np.savez_compressed(tmp_path / "scene.npz", rgb=inputs.rgb, xyz=inputs.xyz, version=version)
    with pytest.raises(ValueError, match=message):
        load_scene(tmp_path / "scene.npz")


def test_camera_set_is_the_scenes_cameras_or_an_error_naming_the_scene(node_path):
    _, _, scene = node_path
    cameras = camera_set(scene)
    assert (cameras.width, cameras.height, cameras.num_frames) == (WIDTH, HEIGHT, FRAMES)
    np.testing.assert_array_equal(cameras.K, scene.K)
    np.testing.assert_array_equal(cameras.cams2world, scene.cams2world)
    with pytest.raises(ValueError, match=r"scene\.npz has no cameras \(K, cams2world\); run `fourdnex postopt`"):
        camera_set(Scene(rgb=scene.rgb, xyz=scene.xyz), "scene.npz")


def test_no_other_module_builds_a_camera_set_or_a_scene_by_hand():
    """One camera_set (it was built from a scene in four places) and one scene_from (three places)."""
    hand_built = []
    for folder in ("fourdnex_core", "nodes"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name in ("point_maps.py", "scene_file.py"):
                continue
            text = path.read_text(encoding="utf-8")
            for pattern in ("CameraSet(scene.", "Scene(rgb=", "valid=result.valid"):
                if pattern in text:
                    hand_built.append(f"{path.relative_to(ROOT).as_posix()}: {pattern}")
    assert hand_built == []
