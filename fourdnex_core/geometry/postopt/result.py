"""The fitted cameras applied to every pixel: closed-form depth, registered points, errors."""

from __future__ import annotations

import dataclasses
import logging

import torch

from fourdnex_core.geometry.cameras import backproject, pixel_rays
from fourdnex_core.geometry.postopt.problem import dot, length

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PostOptResult:
    """Cameras, depth and fit quality recovered from XYZ frames.

    intrinsics: [F, 3, 3] per-frame K (all equal when shared; see :attr:`K`).
    cams2world: [F, 4, 4] camera-to-world transforms (OpenCV), in the XYZ's frame and units.
    depth: [F, H, W] camera-space z of each pixel's point; 0 where the input was invalid.
    points: [F, H, W, 3] registered points ``R K^-1 (d [u, v, 1]) + t``; 0 where invalid.
    point_errors: [F, H, W] distance between each XYZ point and its registered point; 0 where invalid.
    residuals: [F] median point error over the valid pixels of each frame (scene units).
    valid: [F, H, W] bool, the pixels used: finite XYZ, inside the caller's mask, confidence
        above 0 and ``min_confidence``.
    num_invalid: [F] int64, pixels per frame left out (non-finite, masked or not confident).
    shared_intrinsics: whether one K was fitted for all frames.
    iterations: solver iterations run.
    """

    intrinsics: torch.Tensor
    cams2world: torch.Tensor
    depth: torch.Tensor
    points: torch.Tensor
    point_errors: torch.Tensor
    residuals: torch.Tensor
    valid: torch.Tensor
    num_invalid: torch.Tensor
    shared_intrinsics: bool
    iterations: int

    @classmethod
    def from_depth(cls, xyz: torch.Tensor, valid: torch.Tensor, intrinsics: torch.Tensor, cams2world: torch.Tensor,
                   depth: torch.Tensor, *, shared_intrinsics: bool, iterations: int) -> PostOptResult:
        """Assemble a result from fitted cameras and depth; registers points and measures errors.

        xyz: [F, H, W, 3]; valid: [F, H, W] bool; intrinsics: [F, 3, 3]; cams2world: [F, 4, 4];
        depth: [F, H, W]. Invalid pixels get depth, points and errors 0. Output in xyz's dtype.
        """
        depth = torch.where(valid, depth, 0.0)
        points = torch.where(valid[..., None], backproject(depth, intrinsics, cams2world), 0.0)
        target = torch.where(valid[..., None], xyz.to(points.dtype), 0.0)
        errors = length(points - target)
        residuals = torch.where(valid, errors, torch.nan).flatten(1).nanmedian(dim=1).values
        dtype = xyz.dtype
        return cls(
            intrinsics=intrinsics.to(dtype), cams2world=cams2world.to(dtype), depth=depth.to(dtype),
            points=points.to(dtype), point_errors=errors.to(dtype), residuals=residuals.to(dtype), valid=valid,
            num_invalid=(~valid).flatten(1).sum(dim=1), shared_intrinsics=shared_intrinsics, iterations=iterations,
        )

    @property
    def K(self) -> torch.Tensor:
        """The shared intrinsics [3, 3]. Raises if each frame has its own K."""
        if not self.shared_intrinsics:
            raise ValueError("Intrinsics were fitted per frame (share_focal=False); use .intrinsics [F, 3, 3].")
        return self.intrinsics[0]


def closed_form_depth(points: torch.Tensor, valid: torch.Tensor, intrinsics: torch.Tensor,
                       rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Best depth for every pixel: the camera-space point projected onto the pixel's ray.

    points: [F, H, W, 3]; valid: [F, H, W]; intrinsics: [F, 3, 3]; rotation: [F, 3, 3];
    translation: [F, 3]. Returns depth [F, H, W], 0 at invalid pixels.
    """
    rays = pixel_rays(intrinsics, *valid.shape[1:])
    offsets = torch.where(valid[..., None], points, 0.0) - translation[:, None, None]
    cam_points = (offsets.flatten(1, 2) @ rotation).unflatten(1, valid.shape[1:])
    return torch.where(valid, dot(rays, cam_points) / dot(rays, rays), 0.0)


def warn_if_behind(depth: torch.Tensor, valid: torch.Tensor) -> None:
    behind = ((depth < 0) & valid).sum() / valid.sum()
    if behind > 0.5:
        logger.warning(
            "post-optimization: %.0f%% of points lie behind their cameras. The XYZ may be mirrored: it must use "
            "OpenCV axes (x right, y down, z forward); flip the y (or z) axis of the XYZ and run again.",
            100 * float(behind),
        )
