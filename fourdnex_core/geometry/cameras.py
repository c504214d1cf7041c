"""Pinhole camera helpers shared by post-optimization, synthetic scenes and tests.

Convention (OpenCV): camera x points right, y down, z forward. A pixel's centre sits at
integer coordinates: ``u`` is the column index, ``v`` the row index, so the image centre is
``((W - 1) / 2, (H - 1) / 2)``. ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.

``cams2world`` maps camera coordinates to world coordinates:
``X_world = R @ X_cam + t`` with ``R = cams2world[:3, :3]``, ``t = cams2world[:3, 3]``.
Depth is the camera-space z of a point, so the point seen at pixel ``(u, v)`` with depth ``d``
is ``X_cam = d * K^-1 [u, v, 1]``.
"""

from __future__ import annotations

import torch
from kornia.geometry.conversions import rotation_matrix_to_axis_angle


def principal_point_at_centre(height: int, width: int) -> tuple[float, float]:
    """The principal point ``(cx, cy)`` of an unshifted ``height x width`` image: its centre."""
    return (width - 1) / 2.0, (height - 1) / 2.0


def intrinsics_matrix(fx: torch.Tensor, fy: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """Pinhole intrinsics without skew.

    fx, fy, cx, cy: tensors of one broadcastable shape ``[...]`` (pixels).
    Returns K: [..., 3, 3].
    """
    fx, fy, cx, cy = torch.broadcast_tensors(fx, fy, cx, cy)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    rows = (torch.stack((fx, zero, cx), -1), torch.stack((zero, fy, cy), -1), torch.stack((zero, zero, one), -1))
    return torch.stack(rows, -2)


def pixel_grid(height: int, width: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Pixel centres as ``(u, v)`` = (column, row). Returns uv: [H, W, 2]."""
    rows = torch.arange(height, dtype=dtype, device=device)
    cols = torch.arange(width, dtype=dtype, device=device)
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack((u, v), dim=-1)


def pixel_rays(intrinsics: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Camera-space rays ``K^-1 [u, v, 1]`` (z = 1, so a ray times depth is the point).

    intrinsics: [..., 3, 3] without skew. Returns rays: [..., H, W, 3].
    """
    if intrinsics.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be [..., 3, 3], got {tuple(intrinsics.shape)}.")
    uv = pixel_grid(height, width, dtype=intrinsics.dtype, device=intrinsics.device)
    fx, fy = intrinsics[..., 0, 0, None, None], intrinsics[..., 1, 1, None, None]
    cx, cy = intrinsics[..., 0, 2, None, None], intrinsics[..., 1, 2, None, None]
    x = (uv[..., 0] - cx) / fx
    y = (uv[..., 1] - cy) / fy
    return torch.stack((x, y, torch.ones_like(x)), dim=-1)


def cams2world_matrix(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Stack a rotation [..., 3, 3] and a translation [..., 3] into a rigid transform [..., 4, 4]."""
    out = torch.zeros(*rotation.shape[:-2], 4, 4, dtype=rotation.dtype, device=rotation.device)
    out[..., :3, :3] = rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def backproject(depth: torch.Tensor, intrinsics: torch.Tensor, cams2world: torch.Tensor) -> torch.Tensor:
    """World points seen at every pixel: ``R (d K^-1 [u, v, 1]) + t``, the one unprojection of the project.

    depth: [..., H, W] camera z, e.g. a clip [F, H, W] or one frame [H, W]; intrinsics: [3, 3]
    (shared) or [..., 3, 3] (one per frame); cams2world: [..., 4, 4] with depth's leading shape.
    Returns points: [..., H, W, 3] in the promoted dtype of the inputs.
    """
    if depth.ndim < 2:
        raise ValueError(f"depth must be [..., H, W] (a frame [H, W] or a clip [F, H, W]), got "
                         f"{tuple(depth.shape)}.")
    leading, (height, width) = tuple(depth.shape[:-2]), depth.shape[-2:]
    if tuple(cams2world.shape) != (*leading, 4, 4):
        raise ValueError(f"cams2world must be {[*leading, 4, 4]} to match depth, got {tuple(cams2world.shape)}.")
    if tuple(intrinsics.shape) not in ((3, 3), (*leading, 3, 3)):
        raise ValueError(f"intrinsics must be [3, 3] or {[*leading, 3, 3]} to match depth, got "
                         f"{tuple(intrinsics.shape)}.")
    dtype = torch.promote_types(torch.promote_types(depth.dtype, intrinsics.dtype), cams2world.dtype)
    depth, intrinsics, cams2world = depth.to(dtype), intrinsics.to(dtype), cams2world.to(dtype)
    points_cam = pixel_rays(intrinsics, height, width) * depth[..., None]
    rotation, translation = cams2world[..., None, None, :3, :3], cams2world[..., None, None, :3, 3]
    return (rotation @ points_cam[..., None])[..., 0] + translation


def project(points: torch.Tensor, intrinsics: torch.Tensor, cams2world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into each frame's camera.

    points: [F, N, 3] world points; intrinsics: [3, 3] or [F, 3, 3]; cams2world: [F, 4, 4].
    Returns (uv [F, N, 2] pixel coordinates, depth [F, N] camera-space z).
    """
    rotation, translation = cams2world[:, :3, :3], cams2world[:, :3, 3]
    points_cam = (points - translation[:, None]) @ rotation
    depth = points_cam[..., 2]
    intrinsics = intrinsics.expand(points.shape[0], 3, 3)
    uv = (points_cam @ intrinsics.transpose(-1, -2))[..., :2] / depth[..., None]
    return uv, depth


def rotation_angle_degrees(rotation_a: torch.Tensor, rotation_b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle between two batches of rotations. rotation_a, rotation_b: [..., 3, 3]. Returns [...]."""
    relative = rotation_a.transpose(-1, -2) @ rotation_b
    return torch.rad2deg(rotation_matrix_to_axis_angle(relative.reshape(-1, 3, 3)).norm(dim=-1)).reshape(
        relative.shape[:-2])


def direct_linear_transform(image_points: torch.Tensor, points: torch.Tensor,
                            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Linear (DLT) map from D-dimensional points to image points, Hartley-normalised.

    Solves ``image_point ~ T [point, 1]`` in the weighted least-squares algebraic sense, per batch
    element: with D = 3 this is camera resection (``T`` a 3 x 4 projection matrix, needs 6 or more
    points not all on one plane); with D = 2 a homography from plane coordinates (4 or more points).

    image_points: [B, N, 2] (pixels, or normalised coordinates for a known K);
    points: [B, N, D]; weights: [B, N] non-negative, or None for equal weights.
    Returns T: [B, 3, D + 1] with unit Frobenius norm; its sign is arbitrary.
    """
    if image_points.ndim != 3 or image_points.shape[-1] != 2 or points.shape[:2] != image_points.shape[:2]:
        raise ValueError(
            f"image_points must be [B, N, 2] and points [B, N, D]; got {tuple(image_points.shape)} and "
            f"{tuple(points.shape)}."
        )
    if weights is None:
        weights = torch.ones(image_points.shape[:2], dtype=image_points.dtype, device=image_points.device)
    image_norm = _similarity_normalization(image_points, weights)
    point_norm = _similarity_normalization(points, weights)
    u, v = _apply_homogeneous(image_norm, image_points).unbind(-1)
    points_h = torch.cat((_apply_homogeneous(point_norm, points), torch.ones_like(points[..., :1])), dim=-1)
    # Each point adds rows [X, 0, -u X] and [0, X, -v X]; their normal matrix needs only four
    # weighted moments of X X^T.
    plain, along_u, along_v, squared = (_weighted_moment(points_h, weights * scale)
                                        for scale in (torch.ones_like(u), u, v, u * u + v * v))
    zeros = torch.zeros_like(plain)
    normal = torch.cat((
        torch.cat((plain, zeros, -along_u), dim=-1),
        torch.cat((zeros, plain, -along_v), dim=-1),
        torch.cat((-along_u, -along_v, squared), dim=-1),
    ), dim=-2)
    _, eigenvectors = torch.linalg.eigh(normal)
    transform_n = eigenvectors[..., 0].reshape(-1, 3, points.shape[-1] + 1)
    transform = torch.linalg.inv(image_norm) @ transform_n @ point_norm
    return transform / torch.linalg.matrix_norm(transform)[:, None, None]


def _weighted_moment(points: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum of weights * X X^T over N. points: [B, N, K]; weights: [B, N]. Returns [B, K, K]."""
    return (points * weights[..., None]).transpose(1, 2) @ points


def _similarity_normalization(points: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Hartley normalisation: move the weighted centroid to 0, scale the mean distance to sqrt(D).

    points: [B, N, D]; weights: [B, N]. Returns the homogeneous transform [B, D + 1, D + 1].
    """
    dim = points.shape[-1]
    total = weights.sum(dim=1, keepdim=True).clamp(min=torch.finfo(points.dtype).tiny)
    centroid = (weights[..., None] * points).sum(dim=1) / total
    spread = (weights * ((points - centroid[:, None]) ** 2).sum(-1).sqrt()).sum(dim=1, keepdim=True) / total
    scale = dim**0.5 / spread.clamp(min=torch.finfo(points.dtype).tiny)
    transform = torch.diag_embed(torch.cat((scale.expand(-1, dim), torch.ones_like(scale)), dim=-1))
    transform[:, :dim, dim] = -scale * centroid
    return transform


def _apply_homogeneous(transform: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply an affine [B, D + 1, D + 1] transform to points [B, N, D]."""
    dim = points.shape[-1]
    return points @ transform[:, :dim, :dim].transpose(1, 2) + transform[:, None, :dim, dim]
