"""Post-optimization inputs: checks of the XYZ, the mask and the options, and which pixels a
solve may use (every pixel's validity, where it is needed)."""

from __future__ import annotations

import logging

import torch

from fourdnex_core.geometry.confidence import check_confidence, check_min_confidence, mask_keeps
from fourdnex_core.geometry.postopt.robust import ROBUST_WIDTH

logger = logging.getLogger(__name__)

MIN_POINTS_PER_FRAME = 16


def check_inputs(xyz: torch.Tensor, mask: torch.Tensor | None, min_confidence: float) -> None:
    """Raise a ValueError naming the problem when xyz [F, H, W, 3] or mask [F, H, W] are not
    what post-optimization takes (shapes, dtypes, a threshold without confidence, negative or
    infinite confidence). Reads the confidence map once; never reads xyz."""
    if not isinstance(xyz, torch.Tensor) or xyz.ndim != 4 or xyz.shape[-1] != 3:
        shape = tuple(xyz.shape) if isinstance(xyz, torch.Tensor) else type(xyz).__name__
        raise ValueError(f"xyz must be a tensor [F, H, W, 3] (channels last), got {shape}.")
    if not xyz.is_floating_point():
        raise ValueError(f"xyz must be a float tensor in scene units, got {xyz.dtype}; see decoded_xyz_to_scene.")
    if mask is not None and tuple(mask.shape) != tuple(xyz.shape[:3]):
        raise ValueError(f"mask must be [F, H, W] = {tuple(xyz.shape[:3])} to match xyz, got {tuple(mask.shape)}.")
    check_min_confidence(min_confidence)
    if min_confidence > 0 and (mask is None or not mask.is_floating_point()):
        given = "none was given" if mask is None else f"the mask is {mask.dtype}"
        raise ValueError(f"min_confidence={min_confidence} needs a float confidence map as mask, but {given}; pass "
                         "the confidence itself, or min_confidence=0.")
    if mask is not None:
        check_confidence(mask)


def usable_points(xyz: torch.Tensor, mask: torch.Tensor | None = None, min_confidence: float = 0.0) -> torch.Tensor:
    """Check XYZ frames and return the pixels a solver may use: finite and kept by ``mask``.

    xyz: [F, H, W, 3] float; mask: [F, H, W] bool validity, float confidence (see
    :func:`~fourdnex_core.geometry.confidence.mask_keeps`) or None. Returns valid: [F, H, W] bool.
    Raises ValueError naming the problem when shapes are wrong or a frame has too few points.
    """
    check_inputs(xyz, mask, min_confidence)
    valid = torch.isfinite(xyz).all(dim=-1)
    if mask is not None:
        valid &= mask_keeps(mask, min_confidence, checked=True).to(xyz.device)
    check_counts(valid.flatten(1).sum(dim=1), valid[0].numel(), mask is not None)
    return valid


def check_counts(counts: torch.Tensor, pixels: int, masked: bool) -> None:
    """Log how many pixels are left out, from the usable ones per frame (counts [F]) out of
    ``pixels`` per frame; raise for frames with too few."""
    total = pixels * len(counts)
    dropped = total - int(counts.sum())
    if dropped:
        logger.info("post-optimization: %d of %d points are non-finite, masked out or not confident; they are "
                    "ignored.", dropped, total)
    poor = (counts < MIN_POINTS_PER_FRAME).nonzero().flatten().tolist()
    if poor:
        cause = "non-finite, masked out or not confident" if masked else "non-finite (NaN or inf)"
        raise ValueError(f"Frames {poor} have fewer than {MIN_POINTS_PER_FRAME} usable XYZ points (the rest are "
                         f"{cause}); post-optimization needs them. Drop those frames or fix the XYZ / mask.")


def check_options(focal: float | tuple[float, float] | None, iterations: int, robust: str,
                  max_points_per_frame: int | None) -> None:
    """Raise a ValueError naming the option that post-optimization cannot take."""
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


