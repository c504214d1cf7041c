"""Camera trajectories for novel-view rendering: each returns cams2world [N, 4, 4] (OpenCV axes).

* :func:`orbit`: the reference camera swung around an axis through a centre point (by default
  the reference camera's up axis), so a camera looking at the centre keeps looking at it;
* :func:`dolly`: the reference camera moved along its own viewing axis;
* :func:`offset_path`: a recovered camera path shifted in each camera's own frame.

The recovered path itself is the scene's ``cams2world``, and any user-given [N, 4, 4] stack of
poses can be rendered as it is.
"""

from __future__ import annotations

import math

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix


def _check_pose(name: str, pose: torch.Tensor) -> None:
    if pose.shape != (4, 4):
        raise ValueError(f"{name} must be one [4, 4] cam2world matrix, got {tuple(pose.shape)}.")


def _check_count(num_frames: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}.")


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
