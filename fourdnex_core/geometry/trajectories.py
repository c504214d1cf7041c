"""Camera trajectories for novel-view rendering: each returns cams2world [N, 4, 4] (OpenCV axes).

* :func:`orbit`: the reference camera swung around an axis through a centre point (by default
  the reference camera's up axis), so a camera looking at the centre keeps looking at it;
* :func:`dolly`: the reference camera moved along its own viewing axis;
* :func:`offset_path`: a recovered camera path shifted in each camera's own frame;
* :func:`interpolate_keyframes`: a smooth path through given keyframe cameras (slerped rotations,
  a Catmull-Rom spline through the positions, a linear focal), e.g. views picked in the viewer.

The recovered path itself is the scene's ``cams2world``, and any user-given [N, 4, 4] stack of
poses can be rendered as it is. For a scene: :func:`trajectory` picks one of these by name (distances
in units of :func:`median_depth`), and :func:`preview_cameras` gives cameras to show a scene from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle

from fourdnex_core.geometry.pointcloud import frame_depth
from fourdnex_core.scene_file import Scene

TRAJECTORIES = ("orbit", "dolly", "path", "path-offset")


def _check_pose(name: str, pose: torch.Tensor) -> None:
    if pose.shape != (4, 4):
        raise ValueError(f"{name} must be one [4, 4] cam2world matrix, got {tuple(pose.shape)}.")


def _check_count(count: int, name: str = "num_frames") -> None:
    if count < 1:
        raise ValueError(f"{name} must be at least 1 (the number of camera poses to make), got {count}.")


def point_ahead(cam2world: torch.Tensor, distance: float) -> torch.Tensor:
    """The scene point ``distance`` along the camera's viewing axis. cam2world: [4, 4] -> [3]."""
    _check_pose("cam2world", cam2world)
    return cam2world[:3, 3] + distance * cam2world[:3, 2]


def orbit(reference: torch.Tensor, center: torch.Tensor, num_frames: int, arc_degrees: float = 360.0,
          axis: torch.Tensor | None = None) -> torch.Tensor:
    """Swing ``reference`` around the line through ``center`` along ``axis``.

    reference: [4, 4] cam2world; center: [3]; axis: [3] (default: the reference camera's up,
    -y). Angles run over ``arc_degrees`` centred on the reference (a full circle starts at it and
    does not repeat it). A positive angle moves the camera to its right around an upright scene.
    Returns [num_frames, 4, 4].
    """
    _check_pose("reference", reference)
    _check_count(num_frames)
    if center.shape != (3,):
        raise ValueError(f"center must be a [3] point, got {tuple(center.shape)}.")
    axis = -reference[:3, 1] if axis is None else axis.to(reference)
    axis = axis / axis.norm().clamp_min(1e-12)
    if abs(arc_degrees) >= 360.0:
        angles = torch.arange(num_frames, dtype=reference.dtype) * (math.radians(arc_degrees) / num_frames)
    else:
        half = math.radians(arc_degrees) / 2
        angles = torch.linspace(-half, half, num_frames, dtype=reference.dtype) if num_frames > 1 \
            else torch.zeros(1, dtype=reference.dtype)
    rotations = axis_angle_to_rotation_matrix(angles[:, None].to(reference.device) * axis)
    poses = reference.expand(num_frames, 4, 4).clone()
    poses[:, :3, :3] = rotations @ reference[:3, :3]
    poses[:, :3, 3] = (rotations @ (reference[:3, 3] - center)[:, None])[..., 0] + center
    return poses


def dolly(reference: torch.Tensor, num_frames: int, distance: float) -> torch.Tensor:
    """Move ``reference`` [4, 4] from where it is to ``distance`` ahead along its viewing axis
    (negative: backwards), in equal steps. Returns [num_frames, 4, 4]."""
    _check_pose("reference", reference)
    _check_count(num_frames)
    steps = torch.linspace(0.0, distance, num_frames, dtype=reference.dtype, device=reference.device)
    poses = reference.expand(num_frames, 4, 4).clone()
    poses[:, :3, 3] = reference[:3, 3] + steps[:, None] * reference[:3, 2]
    return poses


def offset_path(cams2world: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Shift every camera by ``translation`` [3] in its own frame (x right, y down, z forward).

    cams2world: [F, 4, 4] -> [F, 4, 4], orientations unchanged.
    """
    if cams2world.ndim != 3 or cams2world.shape[1:] != (4, 4):
        raise ValueError(f"cams2world must be [F, 4, 4], got {tuple(cams2world.shape)}.")
    if translation.shape != (3,):
        raise ValueError(f"translation must be a [3] vector, got {tuple(translation.shape)}.")
    poses = cams2world.clone()
    poses[:, :3, 3] = cams2world[:, :3, 3] + cams2world[:, :3, :3] @ translation.to(cams2world)
    return poses


def median_depth(scene: Scene) -> float:
    """Median positive depth of the first frame (scene units): the unit of trajectory distances."""
    depth = frame_depth(scene, 0)
    valid = depth[np.isfinite(depth) & (depth > 0)] if depth is not None else np.zeros(0)
    if valid.size == 0:
        raise ValueError("The first frame has no point in front of its camera; post-optimize the scene first.")
    return float(np.median(valid))


def trajectory(scene: Scene, kind: str, num_views: int, arc_degrees: float = 30.0, distance: float = 0.3,
               offset: Sequence[float] = (0.1, 0.0, 0.0)) -> torch.Tensor:
    """cams2world [N, 4, 4] of a novel-view trajectory (distances in median depths).

    kind: ``orbit`` around the point the first camera looks at, ``dolly`` along its axis, ``path``
    (the recovered cameras) or ``path-offset`` (them shifted by ``offset`` in camera axes).
    """
    if scene.K is None or scene.cams2world is None:
        raise ValueError("The scene has no cameras; post-optimize it first.")
    recovered = torch.from_numpy(scene.cams2world).double()
    if kind == "path":
        return recovered
    unit = median_depth(scene)
    if kind == "orbit":
        return orbit(recovered[0], point_ahead(recovered[0], unit), num_views, arc_degrees)
    if kind == "dolly":
        return dolly(recovered[0], num_views, distance * unit)
    if kind == "path-offset":
        return offset_path(recovered, torch.tensor(list(offset), dtype=recovered.dtype) * unit)
    raise ValueError(f"Unknown trajectory {kind!r}; use one of {', '.join(TRAJECTORIES)}.")


def views_intrinsics(K: np.ndarray | torch.Tensor, kind: str, num_views: int) -> torch.Tensor:
    """Intrinsics for the views of a trajectory, from the scene's K [3, 3] or [F, 3, 3]: a shared K
    as it is; with one K per frame (a zoom), the frames' own along the recovered path (``path``,
    ``path-offset``: one view per frame), else the first frame's [3, 3]."""
    K = torch.as_tensor(K)
    if K.ndim == 2 or (kind in ("path", "path-offset") and num_views == K.shape[0]):
        return K
    return K[0]


def preview_cameras(scene: Scene, focal_factor: float = 1.2) -> tuple[torch.Tensor, torch.Tensor]:
    """(K [3, 3] or [F, 3, 3], cams2world [F, 4, 4]) to show a scene from: its recovered cameras, or,
    without post-optimization, the same camera for every frame: ``fx = fy = focal_factor * W``, looking
    down +z at the first frame's points from far enough back to see them all."""
    height, width = scene.rgb.shape[1:3]
    if scene.K is not None and scene.cams2world is not None:
        return torch.from_numpy(scene.K).double(), torch.from_numpy(scene.cams2world).double()
    points = scene.xyz[0].reshape(-1, 3)
    points = points[np.isfinite(points).all(axis=1)]
    low, high = (points.min(0), points.max(0)) if len(points) else (np.zeros(3), np.zeros(3))
    center = (low + high) / 2
    focal = focal_factor * width
    half_extent = max(high[0] - low[0], high[1] - low[1], 1e-6) / 2
    back = half_extent * focal / (min(width, height) / 2)
    K = torch.tensor([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, 3] = torch.tensor([center[0], center[1], low[2] - back])
    return K, pose.expand(scene.num_frames, 4, 4).clone()


def keyframe_views(num_keyframes: int, num_views: int) -> torch.Tensor:
    """The view index [K] at which each of ``num_keyframes`` keyframes is hit exactly: spread evenly
    from the first view to the last (one keyframe: view 0)."""
    _check_count(num_views, "num_views")
    if num_keyframes > num_views:
        raise ValueError(f"A path through {num_keyframes} keyframes needs at least as many views, got num_views="
                         f"{num_views}; raise num_views or clear some views.")
    if num_keyframes == 1:
        return torch.zeros(1, dtype=torch.long)
    return torch.round(torch.linspace(0, num_views - 1, num_keyframes, dtype=torch.float64)).long()


def interpolate_keyframes(cams2world: torch.Tensor, focal: torch.Tensor,
                          num_views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth camera path through keyframes: (cams2world [N, 4, 4], focal [N]).

    cams2world: [K, 4, 4] keyframe poses; focal: [K] any per-keyframe focal measure. Keyframe k is
    view :func:`keyframe_views` [k] exactly. Between two keyframes the rotation is slerped (the
    geodesic, at constant angular speed), the position follows a Catmull-Rom spline through all
    keyframe positions, parametrised by view index (keyframes a different number of views apart still
    give a velocity per view that is continuous at each keyframe; two keyframes: a straight line at
    constant speed) and the focal is linear. One keyframe gives ``num_views`` copies of it.
    """
    if cams2world.ndim != 3 or cams2world.shape[1:] != (4, 4) or cams2world.shape[0] < 1:
        raise ValueError(f"cams2world must be [K, 4, 4] with K >= 1, got {tuple(cams2world.shape)}.")
    if focal.shape != cams2world.shape[:1]:
        raise ValueError(f"focal must be [K] = [{cams2world.shape[0]}], got {tuple(focal.shape)}.")
    keys = keyframe_views(cams2world.shape[0], num_views)
    if cams2world.shape[0] == 1:
        return cams2world.expand(num_views, 4, 4).clone(), focal.expand(num_views).clone()
    views = torch.arange(num_views)
    segment = (torch.searchsorted(keys, views, right=True) - 1).clamp(0, len(keys) - 2)
    u = ((views - keys[segment]).to(cams2world.dtype) / (keys[segment + 1] - keys[segment]))[:, None]
    rotations, positions = cams2world[:, :3, :3], cams2world[:, :3, 3]
    relative = rotation_matrix_to_axis_angle(rotations[:-1].transpose(1, 2) @ rotations[1:])  # [K-1, 3]
    steps = axis_angle_to_rotation_matrix(u * relative[segment])
    poses = torch.eye(4, dtype=cams2world.dtype).repeat(num_views, 1, 1)
    poses[:, :3, :3] = rotations[segment] @ steps
    poses[:, :3, 3] = _catmull_rom(positions, keys.to(cams2world.dtype), segment, u)
    return poses, torch.lerp(focal[segment], focal[segment + 1], u[:, 0].to(focal.dtype))


def _catmull_rom(points: torch.Tensor, times: torch.Tensor, segment: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Cubic Hermite through ``points`` [K, 3] at ``times`` [K] (increasing), with Catmull-Rom tangents
    in units per time step, (p[k+1] - p[k-1]) / (t[k+1] - t[k-1]), the ends reflected (a straight start
    and end). Evaluated in ``segment`` [N] at ``u`` [N, 1] in [0, 1]: [N, 3]. Equal spacing gives the
    uniform Catmull-Rom spline."""
    padded_points = torch.cat([2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]])
    padded_times = torch.cat([2 * times[:1] - times[1:2], times, 2 * times[-1:] - times[-2:-1]])
    tangents = (padded_points[2:] - padded_points[:-2]) / (padded_times[2:] - padded_times[:-2])[:, None]  # [K, 3]
    span = (times[segment + 1] - times[segment])[:, None]  # [N, 1]
    h00, h10, h01, h11 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u, -2 * u**3 + 3 * u**2, u**3 - u**2
    return (h00 * points[segment] + h10 * span * tangents[segment] + h01 * points[segment + 1]
            + h11 * span * tangents[segment + 1])
