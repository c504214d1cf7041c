"""The fitted cameras applied to every pixel: closed-form depth, point-to-ray errors, registered points.

This is the one pass over every pixel of every frame, so it is written for memory traffic: frame
by frame (the temporaries of one frame stay in cache), one matrix product per frame for the
camera-space points, then a dozen in-place element-wise operations on ``[H, W]`` planes, in the
input's own precision (float32 for generated scenes).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from fourdnex_core.geometry.postopt.models import CameraModel

from fourdnex_core.geometry.cameras import backproject, cams2world_matrix, intrinsics_matrix
from fourdnex_core.geometry.confidence import mask_keeps
from fourdnex_core.geometry.postopt.inputs import check_counts

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PostOptResult:
    """Cameras, depth and fit quality recovered from XYZ frames.

    intrinsics: [F, 3, 3] per-frame K (all equal when shared; see :attr:`K`).
    cams2world: [F, 4, 4] camera-to-world transforms (OpenCV), in the XYZ's frame and units.
    depth: [F, H, W] camera-space z of each pixel's point; 0 where the input was invalid.
    point_errors: [F, H, W] distance between each XYZ point and its registered point; 0 where invalid.
    residuals: [F] median point error over the valid pixels of each frame (scene units).
    valid: [F, H, W] bool, the pixels used: finite XYZ, kept by the caller's mask or confidence
        (see :func:`~fourdnex_core.geometry.postopt.inputs.mask_keeps`).
    num_invalid: [F] int64, pixels per frame left out (non-finite, masked or not confident).
    shared_intrinsics: whether one K was fitted for all frames.
    iterations: solver iterations run.
    camera_model: what the intrinsics were fitted as (see
        :class:`~fourdnex_core.geometry.postopt.models.CameraModel`), or None where not recorded.

    :attr:`points` (the registered points) is computed on first use.
    """

    intrinsics: torch.Tensor
    cams2world: torch.Tensor
    depth: torch.Tensor
    point_errors: torch.Tensor
    residuals: torch.Tensor
    valid: torch.Tensor
    num_invalid: torch.Tensor
    shared_intrinsics: bool
    iterations: int
    camera_model: CameraModel | None = None

    @functools.cached_property
    def points(self) -> torch.Tensor:
        """[F, H, W, 3] registered points ``R K^-1 (d [u, v, 1]) + t``; 0 where invalid."""
        return torch.where(self.valid[..., None], backproject(self.depth, self.intrinsics, self.cams2world), 0.0)

    @classmethod
    def from_depth(cls, xyz: torch.Tensor, valid: torch.Tensor, intrinsics: torch.Tensor, cams2world: torch.Tensor,
                   depth: torch.Tensor, *, shared_intrinsics: bool, iterations: int) -> PostOptResult:
        """Assemble a result from fitted cameras and any depth; measures each point's error.

        xyz: [F, H, W, 3]; valid: [F, H, W] bool; intrinsics: [F, 3, 3]; cams2world: [F, 4, 4];
        depth: [F, H, W]. Invalid pixels get depth, points and errors 0. Output in xyz's dtype.
        """
        dtype = xyz.dtype
        depth = torch.where(valid, depth, 0.0)
        points = torch.where(valid[..., None], backproject(depth, intrinsics, cams2world), 0.0)
        errors = torch.where(valid, (points - xyz.to(points.dtype)).norm(dim=-1), 0.0)
        residuals = torch.where(valid, errors, torch.nan).flatten(1).nanmedian(dim=1).values
        return cls(intrinsics=intrinsics.to(dtype), cams2world=cams2world.to(dtype), depth=depth.to(dtype),
                   point_errors=errors.to(dtype), residuals=residuals.to(dtype), valid=valid,
                   num_invalid=(~valid).flatten(1).sum(dim=1), shared_intrinsics=shared_intrinsics,
                   iterations=iterations)

    @classmethod
    def from_cameras(cls, xyz: torch.Tensor, mask: torch.Tensor | None, min_confidence: float,
                     intrinsics: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor, *,
                     shared_intrinsics: bool, iterations: int,
                     camera_model: CameraModel | None = None) -> PostOptResult:
        """Closed-form depth and point-to-ray error of every pixel for fitted cameras.

        xyz: [F, H, W, 3]; mask: [F, H, W] bool or float confidence, or None; intrinsics:
        [F, 4] as (fx, fy, cx, cy); rotation: [F, 3, 3] and translation: [F, 3] (cams2world).
        The valid pixels are the finite points the mask keeps; a frame with fewer than
        ``inputs.MIN_POINTS_PER_FRAME`` raises. Output in xyz's dtype.
        """
        frames, height, width, _ = xyz.shape
        check_cameras_finite(intrinsics, rotation, translation)
        dtype = xyz.dtype if xyz.dtype in (torch.float32, torch.float64) else torch.float32
        device = xyz.device
        intrinsics = intrinsics.to(dtype)
        rotation, translation = rotation.to(dtype), translation.to(dtype)
        depth = torch.empty(frames, height, width, dtype=dtype, device=device)
        errors = torch.empty_like(depth)
        valid = torch.empty(frames, height, width, dtype=torch.bool, device=device)
        residuals = torch.empty(frames, dtype=dtype, device=device)
        counts = torch.empty(frames, dtype=torch.int64, device=device)
        behind = torch.empty(frames, dtype=torch.int64, device=device)
        columns = torch.arange(width, dtype=dtype, device=device)
        rows = torch.arange(height, dtype=dtype, device=device)
        planes = _Planes.empty(height, width, dtype, device)
        for frame in range(frames):
            keeps = mask_keeps(mask[frame], min_confidence, checked=True).to(device) if mask is not None else None
            _fit_frame(xyz[frame].to(dtype), keeps, intrinsics[frame], rotation[frame], translation[frame], columns,
                       rows, planes, depth[frame], errors[frame], valid[frame])
            counts[frame] = valid[frame].sum()
            behind[frame] = (depth[frame] < 0).sum()  # invalid pixels have depth 0
            residuals[frame] = _median_of_valid(errors[frame], int(counts[frame]))
        check_counts(counts, height * width, mask is not None)
        warn_if_behind(float(behind.sum()) / max(int(counts.sum()), 1))
        out = xyz.dtype
        return cls(intrinsics=intrinsics_matrix(*intrinsics.unbind(-1)).to(out),
                   cams2world=cams2world_matrix(rotation, translation).to(out),
                   depth=depth.to(out), point_errors=errors.to(out), residuals=residuals.to(out), valid=valid,
                   num_invalid=height * width - counts, shared_intrinsics=shared_intrinsics,
                   iterations=iterations, camera_model=camera_model)

    @property
    def K(self) -> torch.Tensor:
        """The shared intrinsics [3, 3]. Raises if each frame has its own K."""
        if not self.shared_intrinsics:
            raise ValueError("Intrinsics were fitted per frame (share_focal=False, or a zoom); use .intrinsics "
                             "[F, 3, 3], or .scene_K.")
        return self.intrinsics[0]

    @property
    def scene_K(self) -> torch.Tensor:
        """What ``scene.npz`` stores as K: the shared K [3, 3], or one per frame [F, 3, 3]."""
        return self.intrinsics[0] if self.shared_intrinsics else self.intrinsics


@dataclasses.dataclass
class _Planes:
    """Scratch [H, W] planes reused across frames (one frame's temporaries stay in cache)."""

    ray_x: torch.Tensor
    ray_y: torch.Tensor
    inverse_norm: torch.Tensor
    across_x: torch.Tensor
    across_y: torch.Tensor
    scratch: torch.Tensor
    camera: torch.Tensor
    intrinsics: torch.Tensor | None = None

    @classmethod
    def empty(cls, height: int, width: int, dtype: torch.dtype, device: torch.device) -> _Planes:
        plane = functools.partial(torch.empty, height, width, dtype=dtype, device=device)
        vector = functools.partial(torch.empty, dtype=dtype, device=device)
        return cls(vector(1, width), vector(height, 1), plane(), plane(), plane(), plane(), vector(3, height * width))

    def set_intrinsics(self, intrinsics: torch.Tensor, columns: torch.Tensor, rows: torch.Tensor) -> None:
        """Rays ``((u - cx) / fx, (v - cy) / fy, 1)`` and ``1 / |ray|^2`` for intrinsics [4]; kept
        while the next frame has the same intrinsics."""
        if self.intrinsics is not None and torch.equal(self.intrinsics, intrinsics):
            return
        fx, fy, cx, cy = intrinsics.tolist()
        torch.div(columns - cx, fx, out=self.ray_x[0])
        torch.div(rows - cy, fy, out=self.ray_y[:, 0])
        torch.add(self.ray_x.square(), self.ray_y.square(), out=self.inverse_norm)
        self.inverse_norm.add_(1.0).reciprocal_()
        self.intrinsics = intrinsics.clone()


def check_cameras_finite(intrinsics: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> None:
    """Raise a ValueError naming the frames whose fitted camera (intrinsics [F, 4], rotation [F, 3, 3],
    translation [F, 3]) is not finite: the solve diverged there, which no per-pixel check should blame
    on the input."""
    finite = (torch.isfinite(intrinsics).all(dim=-1) & torch.isfinite(rotation).flatten(1).all(dim=1)
              & torch.isfinite(translation).all(dim=-1))
    if not finite.all():
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(f"Post-optimization diverged on frames {bad[:8]}: their fitted cameras are not finite. Their "
                         "XYZ may not be a view of one scene (random weights give that); try a fixed camera model "
                         "(no zoom), more iterations, or leave those frames out.")


def _fit_frame(xyz: torch.Tensor, keeps: torch.Tensor | None, intrinsics: torch.Tensor, rotation: torch.Tensor,
               translation: torch.Tensor, columns: torch.Tensor, rows: torch.Tensor, planes: _Planes,
               depth: torch.Tensor, errors: torch.Tensor, valid: torch.Tensor) -> None:
    """Depth and error of one frame's pixels, written into ``depth``, ``errors`` and ``valid`` [H, W].

    With the camera-space point ``Y = R^T (X - t)`` and the ray ``r = (rx, ry, 1)``, the offsets
    ``a = (Yx - rx Yz, Yy - ry Yz)`` give the depth ``d = Yz + (a . r) / |r|^2`` and the squared
    distance to the ray ``(ax^2 + ay^2 + (ax ry - ay rx)^2) / |r|^2``: a sum of squares, exact for
    exact points (no cancellation). A non-finite coordinate makes the error non-finite: such
    pixels, and those ``keeps`` [H, W] drops, get depth and error 0 and ``valid`` False.
    """
    height, width, _ = xyz.shape
    planes.set_intrinsics(intrinsics, columns, rows)
    world_to_camera = rotation.T.contiguous()  # a transposed 3 x 3 sends addmm down a path 8x slower
    bias = -(world_to_camera @ translation)
    camera = torch.addmm(bias[:, None], world_to_camera, xyz.reshape(-1, 3).T, out=planes.camera).view(3, height, width)
    cam_x, cam_y, cam_z = camera.unbind(0)
    ray_x, ray_y, inverse_norm = planes.ray_x, planes.ray_y, planes.inverse_norm
    across_x = torch.addcmul(cam_x, ray_x, cam_z, value=-1.0, out=planes.across_x)
    across_y = torch.addcmul(cam_y, ray_y, cam_z, value=-1.0, out=planes.across_y)
    along = torch.mul(across_x, ray_x, out=planes.scratch).addcmul_(across_y, ray_y)
    torch.addcmul(cam_z, along, inverse_norm, out=depth)
    twist = torch.mul(across_x, ray_y, out=cam_x).addcmul_(across_y, ray_x, value=-1.0)
    squared = torch.mul(across_x, across_x, out=planes.scratch).addcmul_(across_y, across_y).addcmul_(twist, twist)
    torch.mul(squared, inverse_norm, out=errors).sqrt_()
    torch.lt(errors, torch.inf, out=valid)  # False for NaN and inf
    if keeps is not None:
        valid &= keeps
    dropped = ~valid
    depth.masked_fill_(dropped, 0.0)
    errors.masked_fill_(dropped, 0.0)


def _median_of_valid(errors: torch.Tensor, count: int) -> torch.Tensor:
    """The (lower) median of one frame's errors [H, W] over its ``count`` valid pixels (NaN when
    none is valid). Invalid pixels hold error 0 and valid ones errors >= 0, so it is the value of
    rank ``invalid + (count - 1) // 2`` over all pixels: no compaction needed."""
    if count == 0:
        return torch.tensor(torch.nan, dtype=errors.dtype, device=errors.device)
    rank = errors.numel() - count + (count - 1) // 2
    if errors.device.type == "cpu":  # numpy's introselect is several times faster than torch's on the CPU
        flat = errors.reshape(-1).numpy()
        return torch.tensor(np.partition(flat, rank)[rank], dtype=errors.dtype)
    return errors.reshape(-1).kthvalue(rank + 1).values


def warn_if_behind(fraction: float) -> None:
    """Warn when more than half of the valid points (``fraction``) lie behind their cameras."""
    if fraction > 0.5:
        logger.warning(
            "post-optimization: %.0f%% of points lie behind their cameras. The XYZ may be mirrored: it must use "
            "OpenCV axes (x right, y down, z forward); flip the y (or z) axis of the XYZ and run again.",
            100 * fraction,
        )
