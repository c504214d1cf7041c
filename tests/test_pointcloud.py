"""Point clouds from scene frames: unprojection, filters, downsampling, per-scene building."""

import numpy as np
import pytest
import torch

from fourdnex_core.geometry.cameras import backproject
from fourdnex_core.geometry.pointcloud import (
    PointCloud,
    PointFilter,
    ScenePointClouds,
    camera_depth,
    depth_edge_mask,
    frame_point_cloud,
    limit_points,
    statistical_outlier_mask,
    valid_mask,
    voxel_downsample,
)
from fourdnex_core.scene_file import Scene

H, W = 24, 32
K = np.array([[30.0, 0.0, 15.5], [0.0, 28.0, 11.5], [0.0, 0.0, 1.0]])
NO_FILTER = PointFilter(use_mask=False, depth_edge_rtol=None, outlier_std_ratio=None)


def rotation_about_y(degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    return np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])


def pose(rotation: np.ndarray, center: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation, center
    return matrix


def depth_points(depth: np.ndarray, K: np.ndarray, cam2world: np.ndarray) -> np.ndarray:
    """:func:`backproject` on numpy arrays: depth [H, W] -> scene points [H, W, 3] float32."""
    return backproject(*(torch.as_tensor(array, dtype=torch.float32) for array in (depth, K, cam2world))).numpy()


def random_rgb(seed: int = 0, frames: int | None = None) -> np.ndarray:
    shape = (H, W, 3) if frames is None else (frames, H, W, 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_unprojected_points_project_back_to_their_pixels():
    depth = np.random.default_rng(1).uniform(1.0, 4.0, (H, W)).astype(np.float32)
    cam2world = pose(rotation_about_y(20.0), np.array([0.3, -0.2, 0.5]))
    xyz = depth_points(depth, K, cam2world)
    camera = (xyz - cam2world[:3, 3]) @ cam2world[:3, :3]  # world -> camera: R^T (X - t)
    pixels = camera @ K.T
    uv = pixels[..., :2] / pixels[..., 2:]
    rows, columns = np.mgrid[0:H, 0:W]
    np.testing.assert_allclose(uv[..., 0], columns, atol=1e-3)
    np.testing.assert_allclose(uv[..., 1], rows, atol=1e-3)
    np.testing.assert_allclose(camera[..., 2], depth, rtol=1e-5)
    np.testing.assert_allclose(camera_depth(xyz, cam2world), depth, rtol=1e-5)


def test_backproject_takes_a_frame_or_a_clip_with_shared_or_per_frame_intrinsics():
    depth = torch.from_numpy(np.random.default_rng(2).uniform(1.0, 4.0, (3, H, W)))
    poses = torch.from_numpy(np.stack([pose(rotation_about_y(10.0 * i), np.array([0.1 * i, 0.0, 0.2]))
                                       for i in range(3)]))
    shared = torch.from_numpy(K)
    zoom = shared * torch.tensor([1.0, 1.2, 1.5], dtype=torch.float64)[:, None, None]
    zoom[:, 2, 2] = 1.0
    for intrinsics in (shared, zoom):
        clip = backproject(depth, intrinsics, poses)
        assert clip.shape == (3, H, W, 3) and clip.dtype == torch.float64
        for i in range(3):
            torch.testing.assert_close(backproject(depth[i], intrinsics if intrinsics.ndim == 2 else intrinsics[i],
                                                   poses[i]), clip[i])
    assert not torch.allclose(backproject(depth, zoom, poses), backproject(depth, shared, poses))
    with pytest.raises(ValueError, match="depth must be"):
        backproject(depth[0, 0], shared, poses[0])
    with pytest.raises(ValueError, match="cams2world must be \\[3, 4, 4\\]"):
        backproject(depth, shared, poses[0])
    with pytest.raises(ValueError, match="intrinsics must be"):
        backproject(depth, zoom[:2], poses)


def test_invalid_and_masked_points_are_dropped_with_their_colours():
    rgb = random_rgb()
    xyz = depth_points(np.full((H, W), 2.0, np.float32), K, np.eye(4))
    xyz[3, 4] = np.nan
    xyz[5, 6, 2] = np.inf
    mask = np.ones((H, W), bool)
    mask[10:12, :] = False
    keep = valid_mask(xyz, mask)
    assert keep.sum() == H * W - 2 - 2 * W
    cloud = frame_point_cloud(rgb, xyz, mask, point_filter=PointFilter(depth_edge_rtol=None, outlier_std_ratio=None))
    assert len(cloud) == keep.sum()
    np.testing.assert_array_equal(cloud.colors, rgb[keep])
    np.testing.assert_array_equal(cloud.positions, xyz[keep].astype(np.float32))


def test_low_confidence_filtering_drops_exactly_the_low_points():
    xyz = depth_points(np.full((H, W), 2.0, np.float32), K, np.eye(4))
    confidence = np.full((H, W), 0.9, np.float32)
    confidence[2, :5] = 0.1
    confidence[7, 3] = 0.0
    confidence[9, 9] = np.nan
    no_threshold = valid_mask(xyz, confidence)
    assert (~no_threshold).sum() == 2 and not no_threshold[7, 3] and not no_threshold[9, 9]
    kept = valid_mask(xyz, confidence, min_confidence=0.5)
    np.testing.assert_array_equal(kept, confidence >= 0.5)
    cloud = frame_point_cloud(random_rgb(), xyz, confidence,
                              point_filter=PointFilter(min_confidence=0.5, depth_edge_rtol=None, outlier_std_ratio=None))
    assert len(cloud) == H * W - 7
    np.testing.assert_array_equal(cloud.positions, xyz[confidence >= 0.5])
    bool_mask = np.ones((H, W), bool)
    np.testing.assert_array_equal(valid_mask(xyz, bool_mask, min_confidence=0.5), bool_mask)


def test_scene_clouds_use_the_confidence_inside_the_mask():
    frames = 2
    xyz = np.stack([depth_points(np.full((H, W), 2.0, np.float32), K, np.eye(4))] * frames)
    mask = np.ones((frames, H, W), bool)
    mask[0, 0] = False
    confidence = np.ones((frames, H, W), np.float32)
    confidence[1, :, :3] = 0.2
    scene = Scene(random_rgb(3, frames), xyz, mask=mask, confidence=confidence)
    clouds = ScenePointClouds(scene, PointFilter(min_confidence=0.5, depth_edge_rtol=None, outlier_std_ratio=None))
    assert len(clouds[0]) == (H - 1) * W
    assert len(clouds[1]) == H * (W - 3)
    assert len(ScenePointClouds(scene, NO_FILTER)[1]) == H * W


def test_depth_edge_mask_marks_only_the_two_pixels_beside_a_step():
    depth = np.full((H, W), 2.0, np.float32)
    depth[:, W // 2:] = 5.0
    edges = depth_edge_mask(depth, rtol=0.1)
    expected = np.zeros((H, W), bool)
    expected[:, W // 2 - 1:W // 2 + 1] = True
    np.testing.assert_array_equal(edges, expected)


def grazing_floor_depth(height: int = H, width: int = W) -> tuple[np.ndarray, np.ndarray]:
    """Depth [H, W] of the floor plane y = 1 (OpenCV: below the camera) seen from the origin, from
    20 units at the top row to 2 at the bottom, and its K [3, 3]: a steep, realistic slant."""
    fy = (height - 1) / (0.5 - 0.05)  # camera-space ray y runs from 0.05 (top) to 0.5 (bottom)
    floor_k = np.array([[fy, 0.0, (width - 1) / 2], [0.0, fy, -0.05 * fy], [0.0, 0.0, 1.0]])
    rows = np.arange(height, dtype=np.float64)[:, None].repeat(width, axis=1)
    return (floor_k[1, 1] / (rows - floor_k[1, 2])).astype(np.float32), floor_k


def test_depth_edge_mask_keeps_a_grazing_floor_and_ignores_nan():
    depth, _ = grazing_floor_depth()
    depth[18, 4] = np.nan
    assert depth[0, 0] / depth[1, 0] > 1.35  # on this small image the top rows differ by ~40 % in depth
    edges = depth_edge_mask(depth, rtol=0.01)
    assert not edges.any()


def test_statistical_outliers_are_the_displaced_points():
    depth = np.full((H, W), 3.0, np.float32)
    xyz = depth_points(depth, K, np.eye(4))
    spikes = [(5, 7), (12, 20), (18, 3)]
    for row, column in spikes:
        xyz[row, column, 2] += 1.5
    valid = np.ones((H, W), bool)
    outliers = statistical_outlier_mask(xyz, valid, num_neighbors=8, radius=2, std_ratio=2.0)
    for row, column in spikes:
        assert outliers[row, column]
    assert outliers.sum() == len(spikes)


def test_statistical_outliers_ignore_distance_and_slant():
    depth, floor_k = grazing_floor_depth(96, 128)
    xyz = depth_points(depth, floor_k, np.eye(4))
    valid = valid_mask(xyz)
    assert not statistical_outlier_mask(xyz, valid).any()  # a clean floor, near and far, loses nothing
    spikes = [(3, 10), (40, 100), (90, 60)]
    for row, column in spikes:
        xyz[row, column] *= 0.7  # pulled towards the camera, off the floor
    outliers = statistical_outlier_mask(xyz, valid)
    assert sorted(zip(*np.nonzero(outliers), strict=True)) == spikes
    np.testing.assert_array_equal(statistical_outlier_mask(xyz * 1000.0, valid), outliers)  # scale-free


def test_most_outliers_go_even_when_they_are_many():
    rng = np.random.default_rng(5)
    xyz = depth_points(rng.uniform(2.9, 3.1, (H, W)).astype(np.float32), K, np.eye(4))
    thrown = rng.random((H, W)) < 0.05
    xyz[thrown] += rng.normal(scale=1.0, size=(thrown.sum(), 3)).astype(np.float32)
    outliers = statistical_outlier_mask(xyz, np.ones((H, W), bool))
    assert (outliers & thrown).sum() >= 0.9 * thrown.sum()
    assert (outliers & ~thrown).sum() <= 0.02 * (~thrown).sum()


def test_statistical_outlier_mask_rejects_an_impossible_neighbour_count():
    xyz = depth_points(np.ones((H, W), np.float32), K, np.eye(4))
    with pytest.raises(ValueError, match=r"outlier_neighbors must be in 1\.\.8"):
        statistical_outlier_mask(xyz, np.ones((H, W), bool), num_neighbors=9, radius=1)


def test_stride_budget_keeps_an_even_subset():
    positions = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    cloud = PointCloud(positions, np.zeros((1000, 3), np.uint8))
    reduced = limit_points(cloud, 300, "stride")
    assert len(reduced) == 300
    index = reduced.positions[:, 0].astype(int) // 3
    assert index[0] == 0 and index[-1] == 999
    gaps = np.diff(index)
    assert gaps.min() >= 3 and gaps.max() <= 4
    assert limit_points(cloud, 0) is cloud


def test_voxel_downsample_averages_each_occupied_voxel():
    positions = np.array([[0.1, 0.1, 0.1], [0.3, 0.3, 0.3], [1.2, 0.1, 0.1], [1.4, 0.3, 0.1]], np.float32)
    colors = np.array([[0, 0, 0], [100, 200, 50], [10, 10, 10], [20, 30, 40]], np.uint8)
    reduced = voxel_downsample(PointCloud(positions, colors), voxel_size=1.0)
    order = np.argsort(reduced.positions[:, 0])
    np.testing.assert_allclose(reduced.positions[order], [[0.2, 0.2, 0.2], [1.3, 0.2, 0.1]], atol=1e-6)
    np.testing.assert_array_equal(reduced.colors[order], [[50, 100, 25], [15, 20, 25]])


def test_voxel_budget_is_met_and_covers_the_extent():
    rng = np.random.default_rng(2)
    positions = rng.uniform(-1, 1, (20000, 3)).astype(np.float32)
    cloud = PointCloud(positions, rng.integers(0, 256, (20000, 3), dtype=np.uint8))
    reduced = limit_points(cloud, 500, "voxel")
    assert 250 <= len(reduced) <= 500
    assert (reduced.positions.min(axis=0) < -0.6).all() and (reduced.positions.max(axis=0) > 0.6).all()


def test_limit_points_rejects_unknown_method():
    cloud = PointCloud(np.zeros((10, 3)), np.zeros((10, 3), np.uint8))
    with pytest.raises(ValueError, match="'stride' or 'voxel'"):
        limit_points(cloud, 5, "random")


def test_point_cloud_rejects_float_colours_with_a_fix():
    with pytest.raises(ValueError, match=r"astype\(np\.uint8\)"):
        PointCloud(np.zeros((4, 3)), np.zeros((4, 3), np.float32))


def test_scene_clouds_from_depth_and_from_xyz_agree():
    frames = 3
    depth = np.random.default_rng(3).uniform(2.0, 2.05, (frames, H, W)).astype(np.float32)
    poses = np.stack([pose(rotation_about_y(5.0 * i), np.array([0.1 * i, 0, 0])) for i in range(frames)])
    xyz = np.stack([depth_points(depth[i], K, poses[i]) for i in range(frames)])
    rgb = random_rgb(4, frames)
    with_cameras = ScenePointClouds(Scene(rgb, xyz + 10.0, depth, K, poses), NO_FILTER)
    points_only = ScenePointClouds(Scene(rgb, xyz), NO_FILTER)
    assert len(with_cameras) == frames
    for rebuilt, raw in zip(with_cameras, points_only, strict=True):
        np.testing.assert_allclose(rebuilt.positions, raw.positions, atol=1e-4)
        np.testing.assert_array_equal(rebuilt.colors, raw.colors)


def test_scene_clouds_apply_mask_filters_and_budget():
    frames = 2
    depth = np.full((frames, H, W), 2.0, np.float32)
    depth[:, :, W // 2:] = 6.0
    xyz = np.stack([depth_points(d, K, np.eye(4)) for d in depth])
    mask = np.ones((frames, H, W), bool)
    mask[1, :4] = False
    scene = Scene(random_rgb(5, frames), xyz, depth, K, np.stack([np.eye(4)] * frames), mask)
    clouds = ScenePointClouds(scene, PointFilter(outlier_std_ratio=None))
    assert len(clouds[0]) == H * (W - 2)
    assert len(clouds[1]) == (H - 4) * (W - 2)
    assert len(ScenePointClouds(scene, max_points=100)[-1]) == 100
    with pytest.raises(IndexError, match="out of range"):
        clouds[frames]


def test_frame_point_cloud_names_shape_problems():
    with pytest.raises(ValueError, match="must be \\[H, W, 3\\]"):
        frame_point_cloud(random_rgb(frames=2), np.zeros((2, H, W, 3)))
