"""Post-optimization (paper eq. 9-10): cameras, intrinsics and depth from generated XYZ frames.

Each pixel ``(u, v)`` of frame ``f`` is seen along the ray ``R_f K^-1 (d [u, v, 1]) + t_f``; the
generated point ``X`` should lie on it. We minimise the (robust) sum of squared 3D distances
between every valid XYZ point and its back-projected pixel over the intrinsics ``K``, the
camera-to-world poses ``(R_f, t_f)`` and the depths ``d``.

For fixed cameras the best depth is closed form: the projection of the camera-space point
``Y = R_f^T (X - t_f)`` onto the ray ``r = K^-1 [u, v, 1]``, ``d = (r . Y) / (r . r)``, and the
remaining error ``Y - d r`` is the point's distance to the ray. So depth is eliminated
(variable projection) and the solver works on cameras and intrinsics only:

1. per frame, a linear camera (DLT) from a sample of pixel-to-point pairs, reweighted a few
   times against outliers, decomposed into ``K, R, t``; the intrinsics are then tied together
   as asked (shared, principal point at the centre, or a known focal) and the poses re-solved
   linearly for those intrinsics;
2. Levenberg-Marquardt on the exact point-to-ray objective, batched over frames, with
   iteratively reweighted robust (Cauchy or Huber) weights scaled per frame by the median
   distance; shared intrinsics are solved through a Schur complement;
3. depth, registered points and per-pixel distances for every pixel, in closed form.

Conventions: OpenCV cameras (x right, y down, z forward), pixel centres at integer
coordinates, depth = camera-space z; see :mod:`fourdnex_core.geometry.cameras`. XYZ must be in
scene units, see :func:`decoded_xyz_to_scene`. The world frame is the XYZ frame; no camera is
assumed to be the identity. Non-finite points are masked out and counted, never used. A float
confidence map, where given, multiplies each point's weight in every step (confidence weighting);
zero or NaN confidence masks the point out.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix
from kornia.geometry.epipolar import KRt_from_projection

from fourdnex_core.geometry.cameras import (
    backproject,
    cams2world_matrix,
    direct_linear_transform,
    intrinsics_matrix,
    pixel_grid,
    pixel_rays,
    principal_point_at_centre,
)
from fourdnex_core.representation import pixels_to_xyz

logger = logging.getLogger(__name__)

RobustLoss = Literal["cauchy", "huber", "none"]
XYZConvention = Literal["paper", "release"]

MIN_POINTS_PER_FRAME = 16
_ROBUST_WIDTH = {"cauchy": 2.385, "huber": 1.345, "none": float("inf")}
_RAYLEIGH_MEDIAN = 1.1774  # median of the norm of a 2D unit Gaussian: distance median -> sigma
_DLT_REWEIGHTS = 6  # robust refits of the linear camera
_POSE_REWEIGHTS = 2  # robust refits of the linear pose once intrinsics are tied
_INIT_POINTS_PER_FRAME = 2048  # samples per frame for the linear start (the refinement uses all samples)
_PLANAR_SPREAD = 1e-3  # frames whose thinnest point spread (variance) is below this share of the widest are planar
_MAX_DAMPING_TRIES = 8
_CONVERGED_DECREASE = 1e-4  # stop once an iteration lowers the robust cost by less than this fraction
_PRECISION_ULPS = 16.0  # XYZ rounding: distances below this many machine epsilons (of the scene size) are noise


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
        errors = _length(points - target)
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


def decoded_xyz_to_scene(decoded: torch.Tensor, convention: XYZConvention = "paper") -> torch.Tensor:
    """Map decoded XYZ pixel values to scene coordinates for post-optimization.

    decoded: [..., 3] the XYZ half of a decoded video, channels last, values about in [0, 1].

    - ``"paper"``: ``2 p - 1``, the inverse of the training encoding ``(xyz + 1) / 2``: scene
      units in [-1, 1], as in the training point maps.
    - ``"release"``: the authors' release shifts decoded x and y by -0.5 and keeps z:
      ``(p_x - 0.5, p_y - 0.5, p_z)``. This equals ``paper / 2 + (0, 0, 0.5)``, a similarity of
      the paper's coordinates, so post-optimization of either gives the same intrinsics and
      rotations; translations map as ``t / 2 + (0, 0, 0.5)`` and depth halves.

    Returns xyz: [..., 3] in scene units.
    """
    if decoded.shape[-1] != 3:
        raise ValueError(f"decoded XYZ must be [..., 3] (channels last), got {tuple(decoded.shape)}.")
    if convention == "paper":
        return pixels_to_xyz(decoded)
    if convention == "release":
        shift = torch.tensor([0.5, 0.5, 0.0], dtype=decoded.dtype, device=decoded.device)
        return decoded - shift
    raise ValueError(f"Unknown XYZ convention {convention!r}; use 'paper' or 'release'.")


def post_optimize(
    xyz: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    share_focal: bool = True,
    fix_principal_point: bool = True,
    focal: float | tuple[float, float] | None = None,
    iterations: int = 20,
    robust: RobustLoss = "cauchy",
    max_points_per_frame: int | None = 4096,
    seed: int = 0,
    min_confidence: float = 0.0,
    callback: Callable[[int, float], None] | None = None,
) -> PostOptResult:
    """Recover intrinsics, camera poses and depth from XYZ frames.

    Args:
        xyz: [F, H, W, 3] points in scene units, in one world frame (4DNeX: the first camera's).
        mask: [F, H, W], optional: a bool validity mask (False drops a pixel: known sky...) or a
            float confidence map (>= 0) whose values weight each point in the linear start and
            the robust refinement; confidence 0 or NaN drops the pixel. Non-finite points are
            dropped either way.
        share_focal: one K for all frames (the paper); False fits each frame's own intrinsics.
        fix_principal_point: keep ``(cx, cy)`` at the image centre ``((W-1)/2, (H-1)/2)``.
        focal: known focal length in pixels (``fx = fy``, or a ``(fx, fy)`` pair); it is then kept.
        iterations: most Levenberg-Marquardt iterations; stops earlier once converged.
        robust: ``"cauchy"`` (default) or ``"huber"`` weights against outliers, or ``"none"``.
        max_points_per_frame: solve the cameras on a random sample of this many valid points per
            frame (None: all); depth and errors are always computed for every pixel.
        seed: seeds that sample.
        min_confidence: with a confidence map, also drop the pixels whose confidence is below this.
        callback: called as ``callback(iteration, robust_cost)`` after each Levenberg-Marquardt
            iteration (counting from 1), e.g. to step a progress bar; fewer than ``iterations``
            calls when the solver converges early.
    Returns:
        A :class:`PostOptResult`, in the dtype of ``xyz``.
    """
    _check_options(focal, iterations, robust, max_points_per_frame, min_confidence)
    valid = usable_points(xyz, mask, min_confidence)
    _, height, width, _ = xyz.shape
    points64 = xyz.detach().to(torch.float64)
    centre, scale, precision = _scene_normalization(points64, valid, xyz.dtype)
    points_n = torch.where(valid[..., None], (points64 - centre) / scale, 0.0)
    uv = pixel_grid(height, width, dtype=torch.float64, device=xyz.device)
    sample_index, sample_weight = _sample_pixels(point_weights(valid, mask), max_points_per_frame, seed)
    sample_points = torch.gather(points_n.flatten(1, 2), 1, sample_index[..., None].expand(-1, -1, 3))
    sample_uv = uv.reshape(-1, 2)[sample_index]

    problem = _Problem(sample_uv, sample_points, sample_weight, robust, share_focal or focal is not None,
                       _free_intrinsics(fix_principal_point, focal), precision)
    state = _initial_state(problem.head(_INIT_POINTS_PER_FRAME), height, width, focal)
    state, iterations_run = _levenberg_marquardt(problem, state, iterations, callback)

    rotation, translation = state.rotation, state.translation * scale + centre
    intrinsics = intrinsics_matrix(*state.intrinsics.unbind(-1))
    depth = _closed_form_depth(points64, valid, intrinsics, rotation, translation)
    _warn_if_behind(depth, valid)
    return PostOptResult.from_depth(xyz.detach(), valid, intrinsics, cams2world_matrix(rotation, translation), depth,
                                    shared_intrinsics=problem.shared, iterations=iterations_run)


def usable_points(xyz: torch.Tensor, mask: torch.Tensor | None = None, min_confidence: float = 0.0) -> torch.Tensor:
    """Check XYZ frames and return the pixels a solver may use: finite and kept by ``mask``.

    xyz: [F, H, W, 3] float; mask: [F, H, W] bool validity, float confidence (see
    :func:`mask_keeps`) or None. Returns valid: [F, H, W] bool.
    Raises ValueError naming the problem when shapes are wrong or a frame has too few points.
    """
    if not isinstance(xyz, torch.Tensor) or xyz.ndim != 4 or xyz.shape[-1] != 3:
        shape = tuple(xyz.shape) if isinstance(xyz, torch.Tensor) else type(xyz).__name__
        raise ValueError(f"xyz must be a tensor [F, H, W, 3] (channels last), got {shape}.")
    if not xyz.is_floating_point():
        raise ValueError(f"xyz must be a float tensor in scene units, got {xyz.dtype}; see decoded_xyz_to_scene.")
    if mask is not None and tuple(mask.shape) != tuple(xyz.shape[:3]):
        raise ValueError(f"mask must be [F, H, W] = {tuple(xyz.shape[:3])} to match xyz, got {tuple(mask.shape)}.")
    valid = torch.isfinite(xyz).all(dim=-1)
    if mask is not None:
        valid &= mask_keeps(mask, min_confidence).to(xyz.device)
    elif min_confidence > 0:
        raise ValueError(f"min_confidence={min_confidence} needs a float confidence map as mask; none was given.")
    dropped = int((~valid).sum())
    if dropped:
        logger.info("post-optimization: %d of %d points are non-finite, masked out or not confident; they are "
                    "ignored.", dropped, valid.numel())
    poor = (valid.flatten(1).sum(dim=1) < MIN_POINTS_PER_FRAME).nonzero().flatten().tolist()
    if poor:
        cause = "non-finite, masked out or not confident" if mask is not None else "non-finite (NaN or inf)"
        raise ValueError(
            f"Frames {poor} have fewer than {MIN_POINTS_PER_FRAME} usable XYZ points (the rest are {cause}); "
            "post-optimization needs them. Drop those frames or fix the XYZ / mask."
        )
    return valid


def mask_keeps(mask: torch.Tensor, min_confidence: float = 0.0) -> torch.Tensor:
    """The pixels a validity mask or confidence map keeps.

    mask: [F, H, W] bool (True keeps), or float confidence >= 0 (kept where it is above 0 and at
    least ``min_confidence``; NaN drops). Other dtypes are read as validity (non-zero keeps).
    Returns [F, H, W] bool. Raises ValueError for negative or infinite confidence, or for a
    ``min_confidence`` given with a bool mask.
    """
    if not mask.is_floating_point():
        if min_confidence > 0:
            raise ValueError(f"min_confidence={min_confidence} needs a float confidence map, but the mask is "
                             f"{mask.dtype}; pass the confidence itself, or min_confidence=0.")
        return mask.to(torch.bool)
    if bool((mask < 0).any()) or bool(torch.isinf(mask).any()):
        finite = mask[torch.isfinite(mask)]
        low = float(finite.min()) if finite.numel() else float("nan")
        raise ValueError(f"Confidence must be finite and >= 0 (0 or NaN drops a point), got values down to {low} "
                         "or infinite ones; pass probabilities, or exp() of a log-confidence.")
    return (mask > 0) & (mask >= min_confidence)


def point_weights(valid: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel solver weights [F, H, W] float64: the confidence (a float ``mask``) or 1 at
    valid pixels, 0 elsewhere. valid: [F, H, W] bool from :func:`usable_points`."""
    if mask is None or not mask.is_floating_point():
        return valid.to(torch.float64)
    return torch.where(valid, mask.to(device=valid.device, dtype=torch.float64), 0.0)


def _check_options(focal: float | tuple[float, float] | None, iterations: int, robust: str,
                   max_points_per_frame: int | None, min_confidence: float) -> None:
    if focal is not None:
        values = focal if isinstance(focal, tuple) else (focal,)
        if len(values) not in (1, 2) or not all(value > 0 for value in values):
            raise ValueError(f"focal must be a positive number of pixels or an (fx, fy) pair, got {focal}.")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}.")
    if robust not in _ROBUST_WIDTH:
        raise ValueError(f"Unknown robust loss {robust!r}; use one of {sorted(_ROBUST_WIDTH)}.")
    if max_points_per_frame is not None and max_points_per_frame < MIN_POINTS_PER_FRAME:
        raise ValueError(f"max_points_per_frame must be >= {MIN_POINTS_PER_FRAME} or None, got {max_points_per_frame}.")
    if not min_confidence >= 0:
        raise ValueError(f"min_confidence must be >= 0, got {min_confidence}.")


def _scene_normalization(points: torch.Tensor, valid: torch.Tensor,
                         input_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Robust centre [3] and scale [] of the valid points, so the solve runs on unit-size data,
    and the rounding precision of the input points in those units."""
    inside = points[valid]
    centre = inside.median(dim=0).values
    spread = _length(inside - centre).median()
    if not spread > 0:
        raise ValueError(f"Half or more of the {len(inside)} usable XYZ points sit at one place "
                         f"{tuple(round(v, 6) for v in centre.tolist())}: the point maps are flat or empty (all "
                         "zero?), and cameras cannot be fitted to them. Check how the scene was made.")
    scale = spread.clamp(min=torch.finfo(points.dtype).tiny)
    magnitude = max(float(_length(inside).median() / scale), 1.0)
    return centre, scale, _PRECISION_ULPS * torch.finfo(input_dtype).eps * magnitude


def _sample_pixels(weights: torch.Tensor, max_points: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick up to max_points valid pixels per frame at random, whatever their weight.

    weights: [F, H, W] float64, 0 at invalid pixels. Returns (flat pixel indices [F, N],
    weights [F, N]: the pixels' weights, 0 for padding).
    """
    flat = weights.flatten(1)
    if max_points is None or max_points >= flat.shape[1]:
        index = torch.arange(flat.shape[1], device=weights.device).expand(flat.shape[0], -1)
    else:
        generator = torch.Generator(device=weights.device).manual_seed(seed)
        keys = torch.rand(flat.shape, generator=generator, device=weights.device)
        index = keys.masked_fill(flat <= 0, 2.0).topk(max_points, dim=1, largest=False).indices
    return index, torch.gather(flat, 1, index)


def _free_intrinsics(fix_principal_point: bool, focal: float | tuple[float, float] | None) -> tuple[int, ...]:
    """Indices into (fx, fy, cx, cy) that the solver may change."""
    free = () if focal is not None else (0, 1)
    return free if fix_principal_point else (*free, 2, 3)


@dataclasses.dataclass(frozen=True)
class _Problem:
    """The sampled correspondences and solver settings.

    uv: [F, N, 2] pixels; points: [F, N, 3] normalised XYZ; weights: [F, N] confidence (1 without
    a confidence map; 0 = padding), multiplying the robust weights everywhere.
    shared: one set of intrinsics for all frames; free: indices of (fx, fy, cx, cy) to solve.
    precision: distance (normalised units) below which the XYZ cannot be trusted: a few ulps
    of its input dtype. A fit this close is exact; robust weights never resolve finer.
    """

    uv: torch.Tensor
    points: torch.Tensor
    weights: torch.Tensor
    robust: RobustLoss
    shared: bool
    free: tuple[int, ...]
    precision: float

    def head(self, count: int) -> _Problem:
        """The first ``count`` samples of each frame (a random subset: samples come in random order)."""
        return dataclasses.replace(self, uv=self.uv[:, :count], points=self.points[:, :count],
                                   weights=self.weights[:, :count])


@dataclasses.dataclass(frozen=True)
class _State:
    """Solver unknowns. rotation: [F, 3, 3], translation: [F, 3] (cams2world, normalised units),
    intrinsics: [F, 4] as (fx, fy, cx, cy)."""

    rotation: torch.Tensor
    translation: torch.Tensor
    intrinsics: torch.Tensor


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


def _initial_state(problem: _Problem, height: int, width: int,
                   focal: float | tuple[float, float] | None) -> _State:
    """Linear cameras per frame, then intrinsics tied as requested and poses re-solved for them."""
    planes = _fit_planes(problem)
    projection, weights = _robust_dlt(problem.uv, problem.points, problem.weights, problem, _DLT_REWEIGHTS)
    centre = torch.tensor(principal_point_at_centre(height, width), dtype=problem.uv.dtype, device=problem.uv.device)
    intrinsics = _initial_intrinsics(problem, projection, planes, centre, focal)
    rotation, translation = _poses_for_intrinsics(problem, intrinsics, planes, weights)
    return _replace_flipped_poses(problem, _State(rotation, translation, intrinsics))


def _fit_planes(problem: _Problem) -> _Planes:
    """Robust (reweighted) least-squares plane per frame; flags frames whose points are flat."""
    weights = problem.weights
    for _ in range(_DLT_REWEIGHTS):
        total = weights.sum(dim=1, keepdim=True)
        origin = (weights[..., None] * problem.points).sum(dim=1) / total
        offsets = problem.points - origin[:, None]
        covariance = (weights[..., None] * offsets).transpose(1, 2) @ offsets / total[..., None]
        spread, directions = torch.linalg.eigh(covariance)                   # ascending
        weights = problem.weights * _robust_weights((offsets @ directions[..., :1])[..., 0].abs(), problem)
    first, second = directions[..., 2], directions[..., 1]
    axes = torch.stack((first, second, torch.linalg.cross(first, second)), dim=-1)
    return _Planes(spread[:, 0] <= _PLANAR_SPREAD * spread[:, 2], origin, axes, weights)


def _robust_dlt(image_points: torch.Tensor, points: torch.Tensor, weights: torch.Tensor, problem: _Problem,
                rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct linear transform [F, 3, D + 1], refitted ``rounds`` times with robust weights [F, N]."""
    for _ in range(rounds):
        transform = direct_linear_transform(image_points, points, weights)
        points_h = torch.cat((points, torch.ones_like(points[..., :1])), dim=-1)
        image = points_h @ transform.transpose(1, 2)                              # [F, N, 3]
        error = image[..., :2] - image_points * image[..., 2:]
        weights = problem.weights * _robust_weights(torch.hypot(error[..., 0], error[..., 1]), problem)
    return transform, weights


def _initial_intrinsics(problem: _Problem, projection: torch.Tensor, planes: _Planes, centre: torch.Tensor,
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


def _focal_from_planes(problem: _Problem, planes: _Planes, centre: torch.Tensor) -> torch.Tensor:
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


def _poses_for_intrinsics(problem: _Problem, intrinsics: torch.Tensor, planes: _Planes,
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


def _poses_from_planes(problem: _Problem, rays: torch.Tensor,
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


def _replace_flipped_poses(problem: _Problem, state: _State) -> _State:
    """Give frames whose points lie mostly behind the camera the pose of the nearest frame that sees them ahead.

    Lines cannot tell a camera from its mirror image looking away; a noisy linear solve may land
    there, and a neighbouring frame's pose is a safe start instead.
    """
    depth = _ray_geometry(problem, state).depth[..., 0]
    ahead = torch.where(problem.weights > 0, depth, torch.nan).nanmedian(dim=1).values > 0
    if bool(ahead.all()) or not bool(ahead.any()):
        return state
    frames = torch.arange(len(ahead), device=ahead.device)
    good = frames[ahead]
    nearest = good[(frames[:, None] - good[None]).abs().argmin(dim=1)]
    logger.info("post-optimization: frames %s start from a neighbour's pose (linear pose faced away).",
                frames[~ahead].tolist())
    return _State(state.rotation[nearest], state.translation[nearest], state.intrinsics)


def _robust_weights(distances: torch.Tensor, problem: _Problem, width: torch.Tensor | None = None) -> torch.Tensor:
    """IRLS weights [F, N] for distances [F, N]; the loss width [F, 1] defaults to the median-based one."""
    if problem.robust == "none":
        return torch.ones_like(distances)
    if width is None:
        width = _robust_width(_median_distance(distances, problem), problem)
    ratio = distances / width
    if problem.robust == "cauchy":
        return 1.0 / (1.0 + ratio**2)
    return torch.where(ratio <= 1.0, 1.0, 1.0 / ratio.clamp(min=1.0))


def _median_distance(distances: torch.Tensor, problem: _Problem) -> torch.Tensor:
    """Median over each frame's sampled points. distances: [F, N]. Returns [F, 1]."""
    return torch.where(problem.weights > 0, distances, torch.nan).nanmedian(dim=1, keepdim=True).values


def _robust_width(median: torch.Tensor, problem: _Problem) -> torch.Tensor:
    """Per-frame loss width [F, 1]: the robust constant times a sigma from the median distance [F, 1]."""
    return (_ROBUST_WIDTH[problem.robust] * median / _RAYLEIGH_MEDIAN).clamp(min=problem.precision)


def _robust_cost(distances: torch.Tensor, width: torch.Tensor, problem: _Problem) -> torch.Tensor:
    """Total robust loss of distances [F, N] for fixed widths [F, 1]. Returns a scalar."""
    if problem.robust == "none":
        rho = 0.5 * distances**2
    elif problem.robust == "cauchy":
        rho = 0.5 * width**2 * torch.log1p((distances / width) ** 2)
    else:
        rho = torch.where(distances <= width, 0.5 * distances**2, width * (distances - 0.5 * width))
    return (problem.weights * rho).sum()


class _RayGeometry(NamedTuple):
    """The samples seen from the cameras of a state.

    cam_points: [F, N, 3] camera-space points Y; rays: [F, N, 3] r = K^-1 [u, v, 1];
    ray_sq: [F, N, 1] |r|^2; depth: [F, N, 1] best depth d = r.Y / |r|^2;
    residual: [F, N, 3] e = Y - d r, the offset from the ray.
    """

    cam_points: torch.Tensor
    rays: torch.Tensor
    ray_sq: torch.Tensor
    depth: torch.Tensor
    residual: torch.Tensor


def _ray_geometry(problem: _Problem, state: _State) -> _RayGeometry:
    """Each sample's camera-space point, ray, best depth and offset from the ray."""
    cam_points = (problem.points - state.translation[:, None]) @ state.rotation
    fx, fy, cx, cy = (value[:, None] for value in state.intrinsics.unbind(-1))
    ray_x = (problem.uv[..., 0] - cx) / fx
    ray_y = (problem.uv[..., 1] - cy) / fy
    rays = torch.stack((ray_x, ray_y, torch.ones_like(ray_x)), dim=-1)
    ray_sq = _dot(rays, rays)[..., None]
    depth = _dot(rays, cam_points)[..., None] / ray_sq
    return _RayGeometry(cam_points, rays, ray_sq, depth, cam_points - depth * rays)


def _jacobian(problem: _Problem, geometry: _RayGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals across the rays and their Jacobian, two rows per point.

    The residual ``e = Y - d r`` is perpendicular to the ray, so it is written in an orthonormal
    basis ``(b1, b2)`` of the plane across the ray: ``e_i = b_i . Y``. Its squared norm is the
    squared point-to-ray distance, and the gradient through this basis is exact.

    Returns residuals [F, 2N] (all b1 rows, then all b2 rows) and the Jacobian
    [F, 2N, 6 + len(free)]. Columns: rotation increment w (R <- R exp(w)), translation increment
    in camera axes (t <- t + R dt), then the free intrinsics as (log fx, log fy, cx / fx, cy / fy)
    increments.
    """
    cam_points, rays, ray_sq, depth, _ = geometry
    across_x = torch.stack((torch.ones_like(depth[..., 0]), torch.zeros_like(depth[..., 0]), -rays[..., 0]), dim=-1)
    first = across_x / _length(across_x)[..., None]
    second = torch.linalg.cross(rays / ray_sq.sqrt(), first)
    residuals, rows = [], []
    for basis in (first, second):
        # d(b . Y)/dw = b x Y, d(b . Y)/dt = -b; d(b . Y)/dr_j = -d b_j since b is across r.
        columns = [torch.linalg.cross(basis, cam_points), -basis]
        for index in problem.free:
            axis = index % 2
            scale = depth[..., 0] * (rays[..., axis] if index < 2 else 1.0)
            columns.append((scale * basis[..., axis])[..., None])
        residuals.append(_dot(basis, cam_points))
        rows.append(torch.cat(columns, dim=-1))
    return torch.cat(residuals, dim=1), torch.cat(rows, dim=1)


def _solve_step(hessian: torch.Tensor, gradient: torch.Tensor, damping: float, shared: bool,
                num_intrinsics: int) -> torch.Tensor:
    """Damped Gauss-Newton step for per-frame normal equations.

    hessian: [F, P, P], gradient: [F, P] with P = 6 + num_intrinsics. With shared intrinsics
    their rows/columns are summed over frames and eliminated by a Schur complement.
    Returns the step [F, P] (the intrinsic part equal across frames when shared).
    """
    diagonal = hessian.diagonal(dim1=-2, dim2=-1)
    floor = 1e-12 * diagonal.amax().clamp(min=1e-300)
    if not shared or num_intrinsics == 0:
        damped = hessian + torch.diag_embed(damping * diagonal + floor)
        return torch.linalg.solve(damped, -gradient)
    pose, intr = slice(0, 6), slice(6, None)
    h_pp = hessian[:, pose, pose] + torch.diag_embed(damping * diagonal[:, pose] + floor)
    h_pk = hessian[:, pose, intr]
    h_kk = hessian[:, intr, intr].sum(0)
    h_kk = h_kk + torch.diag_embed(damping * h_kk.diagonal() + floor)
    g_p, g_k = gradient[:, pose], gradient[:, intr].sum(0)
    solved = torch.linalg.solve(h_pp, torch.cat((h_pk, g_p[..., None]), dim=-1))  # [F, 6, k + 1]
    schur = h_kk - (h_pk.transpose(1, 2) @ solved[..., :-1]).sum(0)
    rhs = -g_k + (h_pk.transpose(1, 2) @ solved[..., -1:]).sum(0)[:, 0]
    step_k = torch.linalg.solve(schur, rhs)
    step_p = -solved[..., -1] - (solved[..., :-1] @ step_k)
    return torch.cat((step_p, step_k.expand(len(step_p), -1)), dim=-1)


def _apply_step(state: _State, step: torch.Tensor, free: tuple[int, ...]) -> _State:
    """Move the state by a step [F, 6 + len(free)] in the Jacobian's parametrisation."""
    rotation = state.rotation @ axis_angle_to_rotation_matrix(step[:, :3])
    translation = state.translation + (state.rotation @ step[:, 3:6, None])[..., 0]
    intrinsics = state.intrinsics.clone()
    for column, index in enumerate(free, start=6):
        focal = state.intrinsics[:, index % 2]
        intrinsics[:, index] = focal * torch.exp(step[:, column]) if index < 2 else \
            state.intrinsics[:, index] + focal * step[:, column]
    return _State(rotation, translation, intrinsics)


def _levenberg_marquardt(problem: _Problem, state: _State, iterations: int,
                         callback: Callable[[int, float], None] | None = None) -> tuple[_State, int]:
    """Robust Levenberg-Marquardt (IRLS weights refreshed each iteration). Returns (state, iterations run).

    ``callback(iteration, robust_cost)`` runs after each accepted step.
    """
    damping = 1e-4
    geometry = _ray_geometry(problem, state)
    for iteration in range(iterations):
        residual, jacobian = _jacobian(problem, geometry)
        distances = torch.hypot(*residual.reshape(len(residual), 2, -1).unbind(1))
        median = _median_distance(distances, problem)
        if bool((median <= problem.precision).all()):
            logger.debug("post-optimization: exact fit (to the XYZ's precision) after %d iterations.", iteration)
            return state, iteration
        width = _robust_width(median, problem)
        weights = problem.weights * _robust_weights(distances, problem, width)
        cost = _robust_cost(distances, width, problem)
        weighted = jacobian * weights.repeat(1, 2)[..., None]
        hessian = weighted.transpose(1, 2) @ jacobian
        gradient = (weighted.transpose(1, 2) @ residual[..., None])[..., 0]
        for _ in range(_MAX_DAMPING_TRIES):
            step = _solve_step(hessian, gradient, damping, problem.shared, len(problem.free))
            candidate = _apply_step(state, step, problem.free)
            candidate_geometry = _ray_geometry(problem, candidate)
            candidate_cost = _robust_cost(_length(candidate_geometry.residual), width, problem)
            if candidate_cost <= cost:
                break
            damping *= 10.0
        else:
            logger.debug("post-optimization: converged after %d iterations (no further decrease).", iteration)
            return state, iteration
        state, geometry, damping = candidate, candidate_geometry, max(damping / 10.0, 1e-9)
        logger.debug("post-optimization iteration %d: robust cost %.3e -> %.3e", iteration, cost, candidate_cost)
        if callback is not None:
            callback(iteration + 1, float(candidate_cost))
        if cost - candidate_cost <= _CONVERGED_DECREASE * cost or step.abs().max() < 1e-12:
            return state, iteration + 1
    return state, iterations


def _closed_form_depth(points: torch.Tensor, valid: torch.Tensor, intrinsics: torch.Tensor,
                       rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Best depth for every pixel: the camera-space point projected onto the pixel's ray.

    points: [F, H, W, 3]; valid: [F, H, W]; intrinsics: [F, 3, 3]; rotation: [F, 3, 3];
    translation: [F, 3]. Returns depth [F, H, W], 0 at invalid pixels.
    """
    rays = pixel_rays(intrinsics, *valid.shape[1:])
    offsets = torch.where(valid[..., None], points, 0.0) - translation[:, None, None]
    cam_points = (offsets.flatten(1, 2) @ rotation).unflatten(1, valid.shape[1:])
    return torch.where(valid, _dot(rays, cam_points) / _dot(rays, rays), 0.0)


def _dot(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Dot product over a last axis of length 3, elementwise (CPU reductions over 3 are slow)."""
    return first[..., 0] * second[..., 0] + first[..., 1] * second[..., 1] + first[..., 2] * second[..., 2]


def _length(vectors: torch.Tensor) -> torch.Tensor:
    """Euclidean length over a last axis of length 3."""
    return _dot(vectors, vectors).sqrt()


def _warn_if_behind(depth: torch.Tensor, valid: torch.Tensor) -> None:
    behind = ((depth < 0) & valid).sum() / valid.sum()
    if behind > 0.5:
        logger.warning(
            "post-optimization: %.0f%% of points lie behind their cameras. The XYZ may be mirrored: it must use "
            "OpenCV axes (x right, y down, z forward); flip the y (or z) axis of the XYZ and run again.",
            100 * float(behind),
        )
