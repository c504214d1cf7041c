"""The solver's start: a linear camera (DLT) per frame, reweighted against outliers and
decomposed into ``K, R, t``; plane homographies for frames too flat for a DLT; intrinsics tied
as asked and poses re-solved linearly for them."""

from __future__ import annotations

import dataclasses
import logging

import torch
from kornia.geometry.epipolar import KRt_from_projection

from fourdnex_core.geometry.cameras import direct_linear_transform, principal_point_at_centre
from fourdnex_core.geometry.postopt.problem import Problem, State, ray_geometry
from fourdnex_core.geometry.postopt.robust import robust_weights

logger = logging.getLogger(__name__)

_DLT_REWEIGHTS = 6  # robust refits of the linear camera
_POSE_REWEIGHTS = 2  # robust refits of the linear pose once intrinsics are tied
_PLANAR_SPREAD = 1e-3  # frames whose thinnest point spread (variance) is below this share of the widest are planar


@dataclasses.dataclass(frozen=True)
class _Planes:
    """A robust plane through each frame's sampled points.

    planar: [F] bool, the points are too flat for a linear camera; origin: [F, 3];
    axes: [F, 3, 3] orthonormal columns (two in-plane directions, then the normal);
    weights: [F, N] robust weights of the plane fit.
    """

    planar: torch.Tensor
    origin: torch.Tensor
    axes: torch.Tensor
    weights: torch.Tensor

    def coordinates(self, points: torch.Tensor) -> torch.Tensor:
        """In-plane coordinates [F, N, 2] of points [F, N, 3]."""
        return ((points - self.origin[:, None]) @ self.axes)[..., :2]


def initial_state(problem: Problem, height: int, width: int,
                   focal: float | tuple[float, float] | None) -> State:
    """Linear cameras per frame, then intrinsics tied as requested and poses re-solved for them."""
    planes = _fit_planes(problem)
    projection, weights = _robust_dlt(problem.uv, problem.points, problem.weights, problem, _DLT_REWEIGHTS)
    centre = torch.tensor(principal_point_at_centre(height, width), dtype=problem.uv.dtype, device=problem.uv.device)
    intrinsics = _initial_intrinsics(problem, projection, planes, centre, focal)
    rotation, translation = _poses_for_intrinsics(problem, intrinsics, planes, weights)
    return _replace_flipped_poses(problem, State(rotation, translation, intrinsics))


def _fit_planes(problem: Problem) -> _Planes:
    """Robust (reweighted) least-squares plane per frame; flags frames whose points are flat."""
    weights = problem.weights
    for _ in range(_DLT_REWEIGHTS):
        total = weights.sum(dim=1, keepdim=True)
        origin = (weights[..., None] * problem.points).sum(dim=1) / total
        offsets = problem.points - origin[:, None]
        covariance = (weights[..., None] * offsets).transpose(1, 2) @ offsets / total[..., None]
        spread, directions = torch.linalg.eigh(covariance)                   # ascending
        weights = problem.weights * robust_weights((offsets @ directions[..., :1])[..., 0].abs(), problem)
    first, second = directions[..., 2], directions[..., 1]
    axes = torch.stack((first, second, torch.linalg.cross(first, second)), dim=-1)
    return _Planes(spread[:, 0] <= _PLANAR_SPREAD * spread[:, 2], origin, axes, weights)


def _robust_dlt(image_points: torch.Tensor, points: torch.Tensor, weights: torch.Tensor, problem: Problem,
                rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct linear transform [F, 3, D + 1], refitted ``rounds`` times with robust weights [F, N]."""
    for _ in range(rounds):
        transform = direct_linear_transform(image_points, points, weights)
        points_h = torch.cat((points, torch.ones_like(points[..., :1])), dim=-1)
        image = points_h @ transform.transpose(1, 2)                              # [F, N, 3]
        error = image[..., :2] - image_points * image[..., 2:]
        weights = problem.weights * robust_weights(torch.hypot(error[..., 0], error[..., 1]), problem)
    return transform, weights


def _initial_intrinsics(problem: Problem, projection: torch.Tensor, planes: _Planes, centre: torch.Tensor,
                        focal: float | tuple[float, float] | None) -> torch.Tensor:
    """(fx, fy, cx, cy) per frame [F, 4] from the linear cameras of non-planar frames, tied as requested."""
    camera = KRt_from_projection(projection)[0]
    camera = camera / camera[:, 2:, 2:]
    estimate = torch.stack((camera[:, 0, 0], camera[:, 1, 1], camera[:, 0, 2], camera[:, 1, 2]), dim=-1)
    solid = ~planes.planar
    if bool(solid.any()):
        typical = estimate[solid].median(dim=0).values.expand_as(estimate)
        estimate = typical if problem.shared else torch.where(solid[:, None], estimate, typical)
    else:
        plane_focal = _focal_from_planes(problem, planes, centre)
        estimate = torch.cat((plane_focal.expand(len(estimate), 2), centre.expand(len(estimate), 2)), dim=-1)
    if focal is not None:
        pair = focal if isinstance(focal, tuple) else (focal, focal)
        known = torch.tensor(pair, dtype=estimate.dtype, device=estimate.device).expand(len(estimate), 2)
        estimate = torch.cat((known, estimate[:, 2:]), dim=-1)
    if 2 not in problem.free:
        estimate = torch.cat((estimate[:, :2], centre.expand(len(estimate), 2)), dim=-1)
    return estimate.contiguous()


def _focal_from_planes(problem: Problem, planes: _Planes, centre: torch.Tensor) -> torch.Tensor:
    """One focal [1] from plane homographies (all frames planar), with the principal point at centre.

    For ``H ~ K [r1 r2 t]`` and ``w = 1 / f^2``, the columns ``h1, h2`` satisfy
    ``h1' diag(w, w, 1) h2 = 0`` and ``h1' diag(w, w, 1) h1 = h2' diag(w, w, 1) h2``:
    two linear equations in ``w`` per frame (Zhang's calibration with square pixels).
    """
    homography, _ = _robust_dlt(problem.uv - centre, planes.coordinates(problem.points), planes.weights, problem, 2)
    first, second = homography[:, :, 0], homography[:, :, 1]
    lhs = torch.cat((first[:, 0] * second[:, 0] + first[:, 1] * second[:, 1],
                     first[:, 0] ** 2 + first[:, 1] ** 2 - second[:, 0] ** 2 - second[:, 1] ** 2))
    rhs = -torch.cat((first[:, 2] * second[:, 2], first[:, 2] ** 2 - second[:, 2] ** 2))
    inverse_square = (lhs * rhs).sum() / (lhs * lhs).sum()
    if not bool(inverse_square > 0):
        fallback = 2.0 * float(centre.max()) + 1.0
        logger.warning("post-optimization: every frame is planar and faces the camera; focal starts at %.1f "
                       "pixels (the image size). Pass focal= if you know it.", fallback)
        return torch.tensor([fallback], dtype=centre.dtype, device=centre.device)
    return inverse_square.rsqrt().reshape(1)


def _poses_for_intrinsics(problem: Problem, intrinsics: torch.Tensor, planes: _Planes,
                          weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear pose for fixed intrinsics [F, 4]: a DLT on normalised rays and the nearest rotation;
    for planar frames a plane homography instead. Returns cams2world rotation [F, 3, 3], translation [F, 3]."""
    fx, fy, cx, cy = (value[:, None] for value in intrinsics.unbind(-1))
    rays = torch.stack(((problem.uv[..., 0] - cx) / fx, (problem.uv[..., 1] - cy) / fy), dim=-1)
    projection, _ = _robust_dlt(rays, problem.points, weights, problem, _POSE_REWEIGHTS)   # ~ s [R_wc | t_wc]
    projection = projection * torch.linalg.det(projection[:, :, :3]).sign()[:, None, None]
    world_to_cam, scale = _nearest_rotation(projection[:, :, :3])
    t_wc = projection[:, :, 3] / scale
    if bool(planes.planar.any()):
        plane_rotation, plane_translation = _poses_from_planes(problem, rays, planes)
        world_to_cam = torch.where(planes.planar[:, None, None], plane_rotation, world_to_cam)
        t_wc = torch.where(planes.planar[:, None], plane_translation, t_wc)
    rotation = world_to_cam.transpose(1, 2)
    return rotation, -(rotation @ t_wc[..., None])[..., 0]


def _poses_from_planes(problem: Problem, rays: torch.Tensor,
                       planes: _Planes) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera pose from plane homographies ``H ~ [r1 r2 t]`` on normalised rays [F, N, 2].

    Returns rotation [F, 3, 3] and translation [F, 3], with the plane's origin in front.
    """
    homography, _ = _robust_dlt(rays, planes.coordinates(problem.points), planes.weights, problem, _POSE_REWEIGHTS)
    homography = homography * homography[:, 2, 2].sign()[:, None, None]
    scale = (homography[:, :, 0].norm(dim=-1) + homography[:, :, 1].norm(dim=-1)) / 2
    first, second = homography[:, :, 0] / scale[:, None], homography[:, :, 1] / scale[:, None]
    in_plane, _ = _nearest_rotation(torch.stack((first, second, torch.linalg.cross(first, second)), dim=-1))
    rotation = in_plane @ planes.axes.transpose(1, 2)
    translation = homography[:, :, 2] / scale[:, None] - (rotation @ planes.origin[..., None])[..., 0]
    return rotation, translation


def _nearest_rotation(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closest rotation to matrix [F, 3, 3] (polar decomposition) and its mean singular value [F, 1]."""
    left, singular, right = torch.linalg.svd(matrix)
    fix = torch.ones_like(singular)
    fix[:, 2] = torch.linalg.det(left @ right).sign()
    return left @ torch.diag_embed(fix) @ right, singular.mean(dim=-1, keepdim=True)


def _replace_flipped_poses(problem: Problem, state: State) -> State:
    """Give frames whose points lie mostly behind the camera the pose of the nearest frame that sees them ahead.

    Lines cannot tell a camera from its mirror image looking away; a noisy linear solve may land
    there, and a neighbouring frame's pose is a safe start instead.
    """
    depth = ray_geometry(problem, state).depth
    ahead = torch.where(problem.weights > 0, depth, torch.nan).nanmedian(dim=1).values > 0
    if bool(ahead.all()) or not bool(ahead.any()):
        return state
    frames = torch.arange(len(ahead), device=ahead.device)
    good = frames[ahead]
    nearest = good[(frames[:, None] - good[None]).abs().argmin(dim=1)]
    logger.info("post-optimization: frames %s start from a neighbour's pose (linear pose faced away).",
                frames[~ahead].tolist())
    return State(state.rotation[nearest], state.translation[nearest], state.intrinsics)
