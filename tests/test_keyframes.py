"""Camera keyframes from the 4D viewer: the JSON text, and paths through the keyframes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle

from fourdnex_core.geometry.keyframes import (
    CONVENTION,
    intrinsics,
    keyframe_trajectory,
    keyframes_json,
    parse_keyframes,
)
from fourdnex_core.geometry.trajectories import _catmull_rom, interpolate_keyframes, keyframe_views


def _pose(axis_angle, position):
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = axis_angle_to_rotation_matrix(torch.tensor([axis_angle], dtype=torch.float64))[0]
    pose[:3, 3] = torch.tensor(position, dtype=torch.float64)
    return pose


KEYFRAMES = torch.stack([_pose([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
                         _pose([0.0, 0.6, 0.1], [1.0, 0.2, 0.5]),
                         _pose([0.2, 1.2, 0.0], [1.5, 0.1, 2.0])])
FOCAL = torch.tensor([1.0, 1.4, 0.8], dtype=torch.float64)


def _angle(a, b):
    return rotation_matrix_to_axis_angle(a[:3, :3].T @ b[:3, :3]).norm().item()


@pytest.mark.parametrize("num_views", [3, 7, 21, 50])
def test_path_hits_every_keyframe_exactly(num_views):
    poses, focal = interpolate_keyframes(KEYFRAMES, FOCAL, num_views)
    keys = keyframe_views(3, num_views)
    assert keys.tolist()[0] == 0 and keys.tolist()[-1] == num_views - 1
    torch.testing.assert_close(poses[keys], KEYFRAMES, atol=1e-12, rtol=0)
    torch.testing.assert_close(focal[keys], FOCAL, atol=1e-12, rtol=0)


def test_path_between_keyframes_is_smooth_and_rigid():
    poses, focal = interpolate_keyframes(KEYFRAMES, FOCAL, 41)
    rotations = poses[:, :3, :3]
    identity = torch.eye(3, dtype=torch.float64).expand(41, 3, 3)
    torch.testing.assert_close(rotations.transpose(1, 2) @ rotations, identity, atol=1e-10, rtol=0)
    assert torch.allclose(torch.det(rotations), torch.ones(41, dtype=torch.float64))
    assert torch.equal(poses[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64).expand(41, 4))
    steps = (poses[1:, :3, 3] - poses[:-1, :3, 3]).norm(dim=1)
    angles = torch.tensor([_angle(a, b) for a, b in zip(poses[:-1], poses[1:])])
    # no jumps: every step within a small factor of the typical one, in position, angle and focal
    assert steps.max() < 2.5 * steps.median() and steps.min() > 0.2 * steps.median()
    assert angles.max() < 2.5 * angles.median() and angles.min() > 0.2 * angles.median()
    assert (focal[1:] - focal[:-1]).abs().max() <= (FOCAL[1:] - FOCAL[:-1]).abs().max() / 20 + 1e-9
    # continuous velocity at the middle keyframe (view 20): the step before and after nearly agree
    before, after = poses[20, :3, 3] - poses[19, :3, 3], poses[21, :3, 3] - poses[20, :3, 3]
    assert (after - before).norm() < 0.15 * before.norm()


def test_position_speed_is_continuous_at_keyframes_unevenly_spaced_in_views():
    """Keyframes 2, 1 and 2 views apart (4 keyframes in 6 views): the velocity per view just before a
    keyframe equals the one just after; with equal spacing the spline is the uniform Catmull-Rom one."""
    points = torch.tensor([[0.0, 0, 0], [1.0, 0.5, 0], [2.0, 0, 1], [3.0, 1, 1]], dtype=torch.float64)
    times = keyframe_views(4, 6).double()
    assert times.tolist() == [0, 2, 3, 5]
    eps = 1e-6
    for k in (1, 2):  # the inner keyframes
        before = torch.tensor([[1 - eps], [1.0]], dtype=torch.float64)
        left = _catmull_rom(points, times, torch.tensor([k - 1, k - 1]), before)
        right = _catmull_rom(points, times, torch.tensor([k, k]), torch.tensor([[0.0], [eps]], dtype=torch.float64))
        assert torch.allclose(left[1], points[k]) and torch.allclose(right[0], points[k])
        left_speed = (left[1] - left[0]) / (eps * (times[k] - times[k - 1]))
        right_speed = (right[1] - right[0]) / (eps * (times[k + 1] - times[k]))
        assert torch.allclose(left_speed, right_speed, atol=1e-4), (left_speed, right_speed)
    u = torch.linspace(0, 1, 5, dtype=torch.float64)[:, None]
    segment = torch.ones(5, dtype=torch.long)
    p0, p1, p2, p3 = points
    uniform = 0.5 * (2 * p1 + (p2 - p0) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2
                     + (3 * p1 - p0 - 3 * p2 + p3) * u**3)
    assert torch.allclose(_catmull_rom(points, torch.arange(4.0, dtype=torch.float64), segment, u), uniform)


def test_two_keyframes_straight_line_and_slerp():
    start, end = _pose([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]), _pose([0.0, math.pi / 2, 0.0], [2.0, 0.0, 0.0])
    poses, focal = interpolate_keyframes(torch.stack([start, end]), torch.tensor([1.0, 2.0], dtype=torch.float64),
                                         5)
    torch.testing.assert_close(poses[:, 0, 3], torch.linspace(0, 2, 5, dtype=torch.float64))
    assert torch.allclose(poses[:, 1:3, 3], torch.zeros(5, 2, dtype=torch.float64))
    for index in range(5):  # constant angular speed about y
        expected = axis_angle_to_rotation_matrix(torch.tensor([[0.0, index * math.pi / 8, 0.0]],
                                                               dtype=torch.float64))[0]
        torch.testing.assert_close(poses[index, :3, :3], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(focal, torch.linspace(1, 2, 5, dtype=torch.float64))


def test_one_keyframe_is_a_fixed_view():
    poses, focal = interpolate_keyframes(KEYFRAMES[1:2], FOCAL[1:2], 6)
    assert torch.equal(poses, KEYFRAMES[1].expand(6, 4, 4)) and torch.equal(focal, FOCAL[1].expand(6))


def test_zero_views_names_num_views():
    with pytest.raises(ValueError, match="num_views must be at least 1"):
        keyframe_views(2, 0)


def test_fewer_views_than_keyframes_is_refused():
    with pytest.raises(ValueError, match="at least as many views.*raise num_views"):
        interpolate_keyframes(KEYFRAMES, FOCAL, 2)


def test_json_round_trip_and_viewer_trajectories():
    fov = torch.tensor([50.0, 30.0, 70.0], dtype=torch.float64)
    text = keyframes_json(KEYFRAMES, fov)
    assert json.loads(text)["convention"] == CONVENTION
    keyframes = parse_keyframes(text)
    assert len(keyframes) == 3 and torch.equal(keyframes.cams2world, KEYFRAMES)
    torch.testing.assert_close(keyframes.fov_y_degrees, fov)
    poses, K = keyframe_trajectory(keyframes, "viewer-path", 9, 48, 64)
    torch.testing.assert_close(poses[[0, 4, 8]], KEYFRAMES, atol=1e-12, rtol=0)
    # the vertical field of view is kept: half the height over the focal is tan(fov / 2)
    torch.testing.assert_close(24 / K[[0, 4, 8], 1, 1], torch.tan(torch.deg2rad(fov) / 2))
    assert torch.equal(K[:, 0, 0], K[:, 1, 1]) and torch.all(K[:, 0, 2] == 31.5) and torch.all(K[:, 1, 2] == 23.5)
    fixed, K_fixed = keyframe_trajectory(keyframes, "viewer-view", 4, 48, 64)
    assert torch.equal(fixed, KEYFRAMES[0].expand(4, 4, 4))
    torch.testing.assert_close(K_fixed, intrinsics(keyframes.focal_heights[:1].expand(4), 48, 64))


def test_no_keyframes():
    assert parse_keyframes("") is None and parse_keyframes("  ") is None
    assert parse_keyframes(json.dumps({"keyframes": []})) is None
    with pytest.raises(ValueError, match="needs camera keyframes.*add view"):
        keyframe_trajectory(None, "viewer-path", 4, 48, 64)


@pytest.mark.parametrize("text, problem", [
    ("{not json", "not JSON"),
    ("[1, 2]", "object with a 'keyframes' list"),
    ('{"keyframes": [{"fov_y_degrees": 40}]}', "keyframe 0 is not an object with a 'cam2world'"),
    ('{"keyframes": [{"cam2world": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}]}', r"4 rows of 4 numbers.*\(3, 3\)"),
    ('{"keyframes": [{"cam2world": [[NaN, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]}',
     "keyframe 0's cam2world holds NaN or infinite numbers"),
    ('{"keyframes": [{"cam2world": [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]}',
     "not a rigid camera pose"),
    ('{"keyframes": [{"cam2world": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "fov_y_degrees": 0}]}',
     "fov_y_degrees must be between 0 and 180"),
    ('{"keyframes": [{"cam2world": [["a", 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]}', "not numbers"),
    ('{"convention": "opengl", "keyframes": []}', "unknown convention 'opengl'"),
])
def test_bad_keyframe_text_names_the_fix(text, problem):
    with pytest.raises(ValueError, match=problem) as error:
        parse_keyframes(text)
    assert "clear views" in str(error.value) and "add view" in str(error.value)
