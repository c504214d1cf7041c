"""Post-optimization inputs: which pixels a solve may use, their weights, the options, scene
normalisation and the random sample of pixels the cameras are solved on."""

from __future__ import annotations

import logging

import torch

from fourdnex_core.geometry.postopt.problem import length
from fourdnex_core.geometry.postopt.robust import ROBUST_WIDTH

logger = logging.getLogger(__name__)

MIN_POINTS_PER_FRAME = 16
_PRECISION_ULPS = 16.0  # XYZ rounding: distances below this many machine epsilons (of the scene size) are noise


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


def check_options(focal: float | tuple[float, float] | None, iterations: int, robust: str,
                   max_points_per_frame: int | None, min_confidence: float) -> None:
    if focal is not None:
        values = focal if isinstance(focal, tuple) else (focal,)
        if len(values) not in (1, 2) or not all(value > 0 for value in values):
            raise ValueError(f"focal must be a positive number of pixels or an (fx, fy) pair, got {focal}.")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}.")
    if robust not in ROBUST_WIDTH:
        raise ValueError(f"Unknown robust loss {robust!r}; use one of {sorted(ROBUST_WIDTH)}.")
    if max_points_per_frame is not None and max_points_per_frame < MIN_POINTS_PER_FRAME:
        raise ValueError(f"max_points_per_frame must be >= {MIN_POINTS_PER_FRAME} or None, got {max_points_per_frame}.")
    if not min_confidence >= 0:
        raise ValueError(f"min_confidence must be >= 0, got {min_confidence}.")


def scene_normalization(points: torch.Tensor, valid: torch.Tensor,
                         input_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Robust centre [3] and scale [] of the valid points, so the solve runs on unit-size data,
    and the rounding precision of the input points in those units."""
    inside = points[valid]
    centre = inside.median(dim=0).values
    spread = length(inside - centre).median()
    if not spread > 0:
        raise ValueError(f"Half or more of the {len(inside)} usable XYZ points sit at one place "
                         f"{tuple(round(v, 6) for v in centre.tolist())}: the point maps are flat or empty (all "
                         "zero?), and cameras cannot be fitted to them. Check how the scene was made.")
    scale = spread.clamp(min=torch.finfo(points.dtype).tiny)
    magnitude = max(float(length(inside).median() / scale), 1.0)
    return centre, scale, _PRECISION_ULPS * torch.finfo(input_dtype).eps * magnitude


def sample_pixels(weights: torch.Tensor, max_points: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
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
