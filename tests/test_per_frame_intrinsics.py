"""One K per frame (a zooming camera) through scene.npz, the camera files, the renderer and the node path."""

import json

import numpy as np
import pytest
import torch

from fourdnex_core.geometry.cameras import backproject
from fourdnex_core.geometry.export_cameras import (
    CameraSet,
    read_cameras_json,
    read_transforms_json,
    write_cameras_json,
    write_transforms_json,
)
from fourdnex_core.geometry.point_maps import PointMaps, camera_set, point_maps_from_postopt, point_maps_from_scene
from fourdnex_core.geometry.point_maps import scene_from
from fourdnex_core.geometry.pointcloud import PointCloud, frame_points
from fourdnex_core.geometry.postopt import post_optimize
from fourdnex_core.geometry.render import fit_intrinsics, render_views
from fourdnex_core.geometry.synthetic import make_synthetic_scene
from fourdnex_core.geometry.trajectories import views_intrinsics
from fourdnex_core.scene_file import Scene, load_scene, save_scene
from fourdnex_core.video_io import frame_to_uint8

FRAMES, HEIGHT, WIDTH = 5, 24, 36


def zoom_intrinsics(frames: int = FRAMES) -> np.ndarray:
    K = np.tile(np.array([[30.0, 0.0, 17.5], [0.0, 31.0, 11.5], [0.0, 0.0, 1.0]]), (frames, 1, 1))
    K[:, :2, :2] *= np.linspace(1.0, 1.5, frames)[:, None, None]
    return K


def test_scene_file_keeps_a_k_per_frame_and_names_the_shapes_it_takes(tmp_path):
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, zoom=1.5, seed=30).to_scene_file()
    scene.K = zoom_intrinsics().astype(np.float32)
    scene.cams2world = np.tile(np.eye(4, dtype=np.float32), (FRAMES, 1, 1))
    back = load_scene(save_scene(scene, tmp_path / "scene.npz"))
    np.testing.assert_array_equal(back.K, scene.K)
    np.testing.assert_array_equal(back.frame_K(3), scene.K[3])
    with pytest.raises(ValueError, match=r"Scene.K must have shape \(3, 3\) or \(5, 3, 3\)"):
        Scene(rgb=scene.rgb, xyz=scene.xyz, K=np.zeros((FRAMES + 1, 3, 3), np.float32))


def test_camera_files_round_trip_a_k_per_frame(tmp_path):
    poses = np.tile(np.eye(4), (FRAMES, 1, 1))
    poses[:, 0, 3] = np.arange(FRAMES)
    cameras = CameraSet(zoom_intrinsics(), poses, WIDTH, HEIGHT)
    data = json.loads(write_cameras_json(tmp_path / "cameras.json", cameras).read_text())
    assert data["intrinsics"]["fx"] == 30.0 and data["frames"][4]["intrinsics"]["fx"] == pytest.approx(45.0)
    np.testing.assert_array_equal(read_cameras_json(tmp_path / "cameras.json").K, cameras.K)
    names = [f"images/{index}.png" for index in range(FRAMES)]
    data = json.loads(write_transforms_json(tmp_path / "transforms.json", cameras, names).read_text())
    assert data["frames"][4]["fl_y"] == pytest.approx(46.5) and data["frames"][4]["cx"] == 18.0  # centres at +0.5
    back, _ = read_transforms_json(tmp_path / "transforms.json")
    np.testing.assert_allclose(back.K, cameras.K)
    with pytest.raises(ValueError, match=r"\[3, 3\] or \[5, 3, 3\]"):
        CameraSet(zoom_intrinsics(FRAMES - 1), poses, WIDTH, HEIGHT)


def test_each_view_renders_with_its_own_k():
    rng = np.random.default_rng(0)
    K = zoom_intrinsics(2)
    clouds, images = [], []
    for index in range(2):
        depth = rng.uniform(1.0, 3.0, (HEIGHT, WIDTH)).astype(np.float32)
        rgb = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        xyz = backproject(torch.from_numpy(depth), torch.from_numpy(K[index]), torch.eye(4)).numpy()
        clouds.append(PointCloud(xyz.reshape(-1, 3), rgb.reshape(-1, 3)))
        images.append(rgb)
    renderings = list(render_views(clouds, torch.from_numpy(K), torch.eye(4).expand(2, 4, 4), HEIGHT, WIDTH,
                                   progress=False))
    for rendering, rgb in zip(renderings, images, strict=True):
        np.testing.assert_array_equal(frame_to_uint8(rendering.image), rgb)
    fitted = fit_intrinsics(torch.from_numpy(K), (HEIGHT, WIDTH), (48, 48))
    torch.testing.assert_close(fitted[1], fit_intrinsics(torch.from_numpy(K[1]), (HEIGHT, WIDTH), (48, 48)))


def test_trajectories_take_the_frames_own_k_along_the_path_and_the_first_elsewhere():
    K = torch.from_numpy(zoom_intrinsics())
    assert torch.equal(views_intrinsics(K, "path", FRAMES), K)
    assert torch.equal(views_intrinsics(K, "path-offset", FRAMES), K)
    assert torch.equal(views_intrinsics(K, "orbit", 12), K[0])
    assert torch.equal(views_intrinsics(K[0], "path", FRAMES), K[0])


def test_a_zoom_travels_from_post_optimization_to_the_scene_and_back_to_points():
    truth = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, zoom=1.4, seed=31, dtype=torch.float64)
    result = post_optimize(truth.xyz)
    assert result.camera_model.focal == "zoom" and result.scene_K.shape == (FRAMES, 3, 3)
    maps = PointMaps(xyz=truth.xyz.float(), rgb=truth.rgb.float())
    cameras, registered = point_maps_from_postopt(maps, result)
    scene = scene_from(maps, cameras)
    assert scene.K.shape == (FRAMES, 3, 3)
    np.testing.assert_allclose(scene.K, truth.intrinsics.numpy(), rtol=1e-5)
    valid = result.valid[2].numpy()
    np.testing.assert_allclose(frame_points(scene, 2)[valid], truth.xyz[2].numpy()[valid], rtol=1e-4, atol=1e-4)
    _, loaded = point_maps_from_scene(scene)
    assert loaded.K.shape == (FRAMES, 3, 3) and camera_set(scene_from(maps, loaded)).per_frame
