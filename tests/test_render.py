"""Point-splat renderer, trajectories and video writing."""

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from fourdnex_core.geometry.cameras import backproject
from fourdnex_core.geometry.pointcloud import PointCloud
from fourdnex_core.geometry.render import Rendering, cloud_schedule, fit_intrinsics, render_views, splat_points
from fourdnex_core.geometry.trajectories import dolly, offset_path, orbit, point_ahead
from fourdnex_core.video_io import frame_to_uint8, write_frames, write_video

K = torch.tensor([[100.0, 0.0, 40.0], [0.0, 90.0, 30.0], [0.0, 0.0, 1.0]])
H, W = 60, 80
IDENTITY = torch.eye(4)
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def colors(*rgb: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.uint8)


def pose(yaw_degrees: float, center: tuple[float, float, float]) -> torch.Tensor:
    angle = np.radians(yaw_degrees)
    matrix = torch.eye(4, dtype=torch.float64)
    matrix[:3, :3] = torch.tensor([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    matrix[:3, 3] = torch.tensor(center)
    return matrix


def test_a_point_lands_on_its_projected_pixel():
    point = torch.tensor([[0.25, -0.1, 2.0]])  # u = 100 * 0.125 + 40 = 52.5 -> 53, v = 90 * -0.05 + 30 = 25.5 -> 26
    rendering = splat_points(point, colors(RED), K, IDENTITY, H, W)
    hit = torch.nonzero(rendering.coverage)
    assert hit.tolist() == [[26, 53]]
    assert rendering.image[26, 53].tolist() == [1.0, 0.0, 0.0]
    assert rendering.depth[26, 53].item() == pytest.approx(2.0)


def test_world_to_camera_pose_moves_the_projection():
    world2cam = torch.eye(4)
    world2cam[:3, 3] = torch.tensor([0.2, 0.0, 1.0])  # camera at (-0.2, 0, -1) looking down +z
    rendering = splat_points(torch.tensor([[0.0, 0.0, 1.0]]), colors(GREEN), K, world2cam, H, W)
    assert torch.nonzero(rendering.coverage).tolist() == [[30, 50]]  # u = 100 * 0.2 / 2 + 40


@pytest.mark.parametrize("near_first", [True, False])
def test_nearest_point_wins_whatever_the_order(near_first):
    near, far = [0.0, 0.0, 1.0], [0.0, 0.0, 3.0]
    points = torch.tensor([near, far] if near_first else [far, near])
    rgb = colors(RED, BLUE) if near_first else colors(BLUE, RED)
    rendering = splat_points(points, rgb, K, IDENTITY, H, W)
    assert rendering.image[30, 40].tolist() == [1.0, 0.0, 0.0]
    assert rendering.depth[30, 40].item() == pytest.approx(1.0)
    assert rendering.coverage.sum() == 1


def test_large_far_splat_is_occluded_by_a_near_point_but_fills_around_it():
    points = torch.tensor([[0.0, 0.0, 4.0], [0.0, 0.0, 1.0]])
    rendering = splat_points(points, colors(BLUE, RED), K, IDENTITY, H, W, point_size=3)
    covered = torch.nonzero(rendering.coverage)
    assert covered.min(dim=0).values.tolist() == [29, 39] and covered.max(dim=0).values.tolist() == [31, 41]
    assert rendering.coverage.sum() == 9
    assert rendering.image[30, 40].tolist() == [1.0, 0.0, 0.0]
    assert (rendering.image[29:32, 39:42].reshape(-1, 3)[:, 0] > 0).all()  # near splat is 3x3 as well


def reference_splat(points: np.ndarray, K: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Painter's algorithm, one point at a time: index of the visible point per pixel (-1: none)."""
    owner = np.full((height, width), -1)
    best = np.full((height, width), np.inf)
    first = -((size - 1) // 2)
    for index, (x, y, z) in enumerate(points):
        if z <= 1e-4:
            continue
        column, row = int(np.floor(K[0, 0] * x / z + K[0, 2] + 0.5)), int(np.floor(K[1, 1] * y / z + K[1, 2] + 0.5))
        for r in range(row + first, row + first + size):
            for c in range(column + first, column + first + size):
                if 0 <= r < height and 0 <= c < width and z < best[r, c]:
                    best[r, c], owner[r, c] = z, index
    return owner


@pytest.mark.parametrize("point_size", [1, 2, 3, 4])
def test_splatting_matches_a_painters_algorithm(point_size):
    rng = np.random.default_rng(point_size)
    points = np.stack([rng.uniform(-1.2, 1.2, 300), rng.uniform(-1.0, 1.0, 300), rng.uniform(-0.5, 3.0, 300)], 1)
    points[:, :2] *= np.abs(points[:, 2:])  # mostly in view, some off the sides, some behind
    palette = rng.integers(0, 256, (300, 3), dtype=np.uint8)
    small = torch.tensor([[12.0, 0.0, 11.5], [0.0, 12.0, 9.5], [0.0, 0.0, 1.0]])
    rendering = splat_points(torch.tensor(points, dtype=torch.float32), torch.from_numpy(palette), small,
                             IDENTITY, 20, 24, point_size)
    owner = reference_splat(points.astype(np.float32), small.numpy(), 20, 24, point_size)
    np.testing.assert_array_equal(rendering.coverage.numpy(), owner >= 0)
    np.testing.assert_array_equal(rendering.holes.numpy(), owner < 0)
    np.testing.assert_array_equal(frame_to_uint8(rendering.image)[owner >= 0], palette[owner[owner >= 0]])


# A wall of points at depth 4 with a box face at depth 2 in front of it (rows 10-19, columns 15-24), one point
# on every pixel centre of a 30 x 40 view: only what the reference camera sees, so moving the camera uncovers
# pixels no point lands on. K: f = 100, principal point at pixel (0, 0), so u = 100 x / z exactly.
BOX_ROWS, BOX_COLUMNS, WALL_Z, BOX_Z = slice(10, 20), slice(15, 25), 4.0, 2.0
SCENE_K = torch.tensor([[100.0, 0.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 1.0]])


def wall_and_box() -> tuple[torch.Tensor, torch.Tensor]:
    """points [30 * 40, 3] and colours (wall grey, box red) of the reference view's pixels."""
    depth = np.full((30, 40), WALL_Z)
    depth[BOX_ROWS, BOX_COLUMNS] = BOX_Z
    rows, columns = np.mgrid[0:30, 0:40]
    points = np.stack([columns * depth / 100.0, rows * depth / 100.0, depth], -1).reshape(-1, 3)
    rgb = np.where((depth == BOX_Z)[..., None], RED, (128, 128, 128)).reshape(-1, 3).astype(np.uint8)
    return torch.tensor(points, dtype=torch.float32), torch.from_numpy(rgb)


def camera_moved_right(baseline: float) -> torch.Tensor:
    world2cam = torch.eye(4)
    world2cam[0, 3] = -baseline
    return world2cam


@pytest.mark.parametrize("baseline, wall_shift, box_shift", [(0.0, 0, 0), (0.08, 2, 4), (0.16, 4, 8), (0.24, 6, 12)])
def test_holes_are_the_pixels_the_moved_camera_sees_no_point_on(baseline, wall_shift, box_shift):
    """Moving right by b shifts the wall 100 b / 4 and the box 100 b / 2 columns left: the wall's last columns
    and a strip right of the box, which the reference camera never saw, are holes."""
    points, rgb = wall_and_box()
    rendering = splat_points(points, rgb, SCENE_K, camera_moved_right(baseline), 30, 40)
    expected = np.zeros((30, 40), bool)
    expected[:, 40 - wall_shift:] = True  # beyond the wall's edge
    expected[BOX_ROWS, 25 - box_shift:25 - wall_shift] = True  # disoccluded: behind the box, seen by no input view
    np.testing.assert_array_equal(rendering.holes.numpy(), expected)
    assert int(rendering.holes.sum()) == 30 * wall_shift + 10 * (box_shift - wall_shift)  # 0, 80, 160, 240
    box = np.zeros((30, 40), bool)
    box[BOX_ROWS, 15 - box_shift:25 - box_shift] = True
    depth = rendering.depth.numpy()
    np.testing.assert_allclose(depth[box], BOX_Z, rtol=1e-6)
    np.testing.assert_allclose(depth[~box & ~expected], WALL_Z, rtol=1e-6)
    assert np.isinf(depth[expected]).all()
    np.testing.assert_array_equal(frame_to_uint8(rendering.image)[box], np.broadcast_to(RED, (box.sum(), 3)))


@pytest.mark.parametrize("point_size, expected_holes", [(1, 80), (2, 39), (3, 30)])
def test_larger_splats_cover_thin_holes(point_size, expected_holes):
    """The 2-column strip (rows 10-19) and the 2 edge columns of a 0.08 move. A 2-pixel splat covers its pixel
    and the next row and column: 1 edge column is left (30), and of the strip 1 column without its top row,
    which the wall points of row 9 reach (9). A 3-pixel splat (one either side) leaves the last column (30)."""
    points, rgb = wall_and_box()
    rendering = splat_points(points, rgb, SCENE_K, camera_moved_right(0.08), 30, 40, point_size)
    assert int(rendering.holes.sum()) == expected_holes
    if point_size == 3:
        assert rendering.holes[:, 39].all() and not rendering.holes[:, :39].any()


def test_letterbox_bands_of_a_fitted_view_are_holes():
    """The 40 x 30 view fitted into 40 x 40 at scale 1 sits 5 rows down: 5 empty rows above and below."""
    points, rgb = wall_and_box()
    fitted = fit_intrinsics(SCENE_K, (30, 40), (40, 40))
    rendering = splat_points(points, rgb, fitted, IDENTITY, 40, 40)
    expected = np.ones((40, 40), bool)
    expected[5:35] = False
    np.testing.assert_array_equal(rendering.holes.numpy(), expected)


def test_hole_area_grows_as_the_camera_orbits_around_the_box():
    points, rgb = wall_and_box()
    box_centre = torch.tensor([19.5 * BOX_Z / 100, 14.5 * BOX_Z / 100, BOX_Z], dtype=torch.float64)
    poses = orbit(torch.eye(4, dtype=torch.float64), box_centre, 5, arc_degrees=40.0)[2:]  # 0, 10, 20 degrees
    renderings = list(render_views([PointCloud(points.numpy(), rgb.numpy())], SCENE_K, poses, 30, 40, progress=False))
    holes = [int(rendering.holes.sum()) for rendering in renderings]
    assert holes[0] == 0 and 0 < holes[1] < holes[2], holes
    batch = Rendering.stack(renderings)
    assert batch.image.shape == (3, 30, 40, 3) and batch.depth.shape == (3, 30, 40)
    assert batch.holes.sum(dim=(1, 2)).tolist() == holes


def test_background_colour_and_points_behind_or_outside_the_camera():
    points = torch.tensor([[0.0, 0.0, -1.0], [10.0, 0.0, 1.0], [float("nan"), 0.0, 1.0]])
    rendering = splat_points(points, colors(RED, RED, RED), K, IDENTITY, H, W, background=(0.2, 0.4, 0.6))
    assert not rendering.coverage.any()
    expected = torch.tensor([0.2, 0.4, 0.6]).expand(H, W, 3)
    torch.testing.assert_close(rendering.image, expected)


def test_rendering_a_depth_map_from_its_own_camera_reproduces_the_image():
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 3.0, (H, W)).astype(np.float32)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    cam2world = pose(15.0, (0.3, 0.1, -0.2))
    xyz = backproject(torch.from_numpy(depth), K, cam2world.float()).numpy()
    cloud = PointCloud(xyz.reshape(-1, 3), rgb.reshape(-1, 3))
    (rendering,) = render_views([cloud], K, cam2world[None], H, W, progress=False)
    assert rendering.coverage.all()
    np.testing.assert_array_equal(frame_to_uint8(rendering.image), rgb)
    torch.testing.assert_close(rendering.depth, torch.from_numpy(depth), rtol=1e-4, atol=1e-4)


def test_render_views_pairs_views_with_frames_in_time():
    assert cloud_schedule(4, 4) == [0, 1, 2, 3]
    assert cloud_schedule(5, 3) == [0, 0, 1, 2, 2]  # round half to even at 0.5 and 1.5
    assert cloud_schedule(3, 1) == [0, 0, 0]
    clouds = [PointCloud(np.array([[0.0, 0.0, 1.0 + i]]), np.array([[i * 50, 0, 0]], np.uint8)) for i in range(3)]
    poses = torch.eye(4).expand(3, 4, 4)
    depths = [r.depth[30, 40].item() for r in render_views(clouds, K, poses, H, W, progress=False)]
    assert depths == [1.0, 2.0, 3.0]


def test_fit_intrinsics_keeps_the_whole_view_centred():
    source = torch.tensor([[600.0, 0.0, 359.5], [0.0, 600.0, 239.5], [0.0, 0.0, 1.0]])
    fitted = fit_intrinsics(source, (480, 720), (512, 512))
    corners = torch.tensor([[-0.5, -0.5, 1.0], [719.5, 479.5, 1.0]]) @ torch.linalg.inv(source).T
    projected = corners @ fitted.T
    torch.testing.assert_close(projected[:, 0], torch.tensor([-0.5, 511.5]))  # width fills the frame
    margin = (512 - 480 * 512 / 720) / 2  # letterbox bands above and below; pixel edges sit at -0.5
    torch.testing.assert_close(projected[:, 1], torch.tensor([margin - 0.5, 512 - margin - 0.5]))


def test_renderer_rejects_bad_shapes_with_the_expected_shape():
    with pytest.raises(ValueError, match="\\[N, 3\\]"):
        splat_points(torch.zeros(4, 2), torch.zeros(4, 2), K, IDENTITY, H, W)
    with pytest.raises(ValueError, match="\\[N, 4, 4\\]"):
        next(render_views([PointCloud(np.zeros((1, 3)), np.zeros((1, 3), np.uint8))], K, IDENTITY, H, W))


# ---------------------------------------------------------------- trajectories

def assert_rigid(poses: torch.Tensor) -> None:
    rotations = poses[:, :3, :3]
    identity = torch.eye(3, dtype=poses.dtype).expand_as(rotations)
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), identity)
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(len(poses), dtype=poses.dtype))
    torch.testing.assert_close(poses[:, 3], torch.tensor([0, 0, 0, 1], dtype=poses.dtype).expand(len(poses), 4))


def test_orbit_keeps_the_centre_in_view_at_constant_distance():
    reference = pose(10.0, (0.5, -0.2, 0.0))
    center = point_ahead(reference, 3.0)
    poses = orbit(reference, center, 7, arc_degrees=60.0)
    assert_rigid(poses)
    torch.testing.assert_close(poses[3], reference)  # the middle view is the reference camera
    distances = (poses[:, :3, 3] - center).norm(dim=1)
    torch.testing.assert_close(distances, torch.full((7,), 3.0, dtype=torch.float64))
    for camera in poses:
        seen = torch.linalg.inv(camera) @ torch.cat([center, torch.ones(1, dtype=center.dtype)])
        torch.testing.assert_close(seen[:3], torch.tensor([0.0, 0.0, 3.0], dtype=seen.dtype))
    right = reference[:3, 0]
    assert (poses[-1, :3, 3] - reference[:3, 3]) @ right > 0.5  # positive angles move to the camera's right
    angle = torch.arccos((poses[0, :3, 2] @ poses[-1, :3, 2]).clamp(-1, 1))
    assert torch.rad2deg(angle).item() == pytest.approx(60.0)


def test_full_orbit_does_not_repeat_the_start():
    poses = orbit(torch.eye(4, dtype=torch.float64), torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64), 8)
    positions = poses[:, :3, 3]
    torch.testing.assert_close(positions[0], torch.zeros(3, dtype=torch.float64))
    steps = (positions.roll(-1, dims=0) - positions).norm(dim=1)
    torch.testing.assert_close(steps, steps[0].expand(8))  # evenly spaced, closing the loop


def test_dolly_moves_along_the_viewing_axis():
    reference = pose(30.0, (1.0, 0.0, 0.0))
    poses = dolly(reference, 5, distance=-2.0)
    assert_rigid(poses)
    forward = reference[:3, 2]
    travelled = (poses[:, :3, 3] - reference[:3, 3]) @ forward
    torch.testing.assert_close(travelled, torch.linspace(0.0, -2.0, 5, dtype=torch.float64))
    torch.testing.assert_close(poses[:, :3, :3], reference[:3, :3].expand(5, 3, 3))


def test_offset_path_shifts_each_camera_in_its_own_frame():
    path = torch.stack([pose(angle, (angle / 10, 0.0, 0.0)) for angle in (0.0, 45.0, 90.0)])
    shifted = offset_path(path, torch.tensor([0.5, 0.0, 0.0]))
    torch.testing.assert_close(shifted[:, :3, :3], path[:, :3, :3])
    for original, moved in zip(path, shifted, strict=True):
        local = torch.linalg.inv(original) @ moved[:, 3]
        torch.testing.assert_close(local[:3], torch.tensor([0.5, 0.0, 0.0], dtype=local.dtype))


# ---------------------------------------------------------------- video

def test_write_video_pads_odd_sizes_and_keeps_every_frame(tmp_path):
    frames = np.zeros((6, 33, 47, 3), np.float32)
    for index in range(6):
        frames[index, :, :, index % 3] = 0.8
    path = write_video(tmp_path / "clip.mp4", frames, fps=12)
    reader = imageio.get_reader(path, format="FFMPEG")
    decoded = [frame for frame in reader]
    assert reader.get_meta_data()["fps"] == pytest.approx(12.0)
    reader.close()
    assert len(decoded) == 6
    assert decoded[0].shape == (34, 48, 3)
    for index, frame in enumerate(decoded):
        channel_means = frame[:33, :47].reshape(-1, 3).mean(axis=0)
        assert np.argmax(channel_means) == index % 3
        assert abs(channel_means[index % 3] - 204) < 12


def test_write_video_streams_from_a_generator_and_rejects_mixed_sizes(tmp_path):
    path = write_video(tmp_path / "stream.mp4", (torch.full((16, 16, 3), 0.5) for _ in range(3)), fps=24)
    reader = imageio.get_reader(path, format="FFMPEG")
    assert reader.count_frames() == 3
    reader.close()
    with pytest.raises(ValueError, match="one size"):
        write_video(tmp_path / "mixed.mp4", [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], fps=24)
    with pytest.raises(ValueError, match="at least one frame"):
        write_video(tmp_path / "empty.mp4", [], fps=24)


def test_write_frames_round_trips_exactly_through_png(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (3, 9, 11, 3), dtype=np.uint8)
    paths = write_frames(tmp_path / "frames", frames)
    assert [path.name for path in paths] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    for path, frame in zip(paths, frames, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), frame)
    with pytest.raises(ValueError, match="\\[H, W, 3\\]"):
        write_frames(tmp_path / "bad", [np.zeros((4, 4))])
