"""The random sample of pixels the cameras are solved on, and the scene normalisation taken from it.

The solver needs only a few thousand points per frame, so nothing here reads every pixel:
pixel indices are drawn at random, and only the drawn points are read and checked (finite, kept
by the mask). Where a frame has too few usable points among the draws (most of it masked out or
non-finite), every pixel's validity is computed instead and the sample drawn among the valid ones.
Either way each frame's sample is a uniformly random subset of its usable pixels, in random order.
"""

from __future__ import annotations

import dataclasses

import torch

from fourdnex_core.geometry.confidence import mask_keeps
from fourdnex_core.geometry.postopt.inputs import usable_points
from fourdnex_core.geometry.postopt.problem import length

_OVERDRAW = 4  # draws per wanted sample: enough while a quarter of each frame is usable
_PRECISION_ULPS = 16.0  # XYZ rounding: distances below this many machine epsilons (of the scene size) are noise


@dataclasses.dataclass(frozen=True)
class Samples:
    """A sample of pixels per frame.

    index: [F, N] flat pixel indices (row * W + column); points: [F, N, 3] float64, their XYZ
    (0 for padding); weights: [F, N] float64, their confidence (1 without a confidence map;
    0 marks padding, in frames with fewer than N usable pixels).
    """

    index: torch.Tensor
    points: torch.Tensor
    weights: torch.Tensor

    def pixels(self, width: int) -> torch.Tensor:
        """Pixel coordinates (u, v) = (column, row) of the samples, [F, N, 2] float64."""
        return torch.stack((self.index % width, self.index // width), dim=-1).to(torch.float64)


def draw_samples(xyz: torch.Tensor, mask: torch.Tensor | None, min_confidence: float, max_points: int | None,
                 seed: int) -> Samples:
    """Up to ``max_points`` usable pixels per frame, drawn at random (None: every pixel).

    xyz: [F, H, W, 3]; mask: [F, H, W] bool or float confidence (already checked), or None.
    """
    frames, height, width, _ = xyz.shape
    pixels = height * width
    if max_points is not None and _OVERDRAW * max_points < pixels:
        drawn = _draw(xyz, mask, min_confidence, max_points, seed)
        if drawn is not None:
            return drawn
    valid = usable_points(xyz, mask, min_confidence)
    flat = valid.flatten(1)
    if max_points is None or max_points >= pixels:
        index = torch.arange(pixels, device=xyz.device).expand(frames, -1)
    else:
        generator = torch.Generator(device=xyz.device).manual_seed(seed)
        keys = torch.rand(flat.shape, generator=generator, device=xyz.device)
        index = keys.masked_fill(~flat, 2.0).topk(max_points, dim=1, largest=False).indices
    return _gather(xyz, mask, index, torch.gather(flat, 1, index))


def _draw(xyz: torch.Tensor, mask: torch.Tensor | None, min_confidence: float, count: int,
          seed: int) -> Samples | None:
    """``count`` distinct usable pixels per frame from ``_OVERDRAW * count`` uniform draws, in
    the order first drawn; None when some frame has too few among them."""
    frames, height, width, _ = xyz.shape
    generator = torch.Generator(device=xyz.device).manual_seed(seed)
    draws = torch.randint(height * width, (frames, _OVERDRAW * count), generator=generator, device=xyz.device)
    ordered, order = draws.sort(dim=1, stable=True)
    repeated = torch.zeros_like(draws, dtype=torch.bool)
    repeated.scatter_(1, order[:, 1:], ordered[:, 1:] == ordered[:, :-1])  # later draws of one pixel
    points = _gather_points(xyz, draws)
    usable = ~repeated & torch.isfinite(points).all(dim=-1)
    if mask is not None:
        usable &= mask_keeps(torch.gather(mask.flatten(1), 1, draws.to(mask.device)), min_confidence,
                             checked=True).to(xyz.device)
    if bool((usable.sum(dim=1) < count).any()):
        return None
    position = torch.arange(draws.shape[1], device=xyz.device).expand_as(draws)
    first = position.masked_fill(~usable, draws.shape[1]).topk(count, dim=1, largest=False).indices.sort(dim=1).values
    return _gather(xyz, mask, torch.gather(draws, 1, first), torch.ones_like(first, dtype=torch.bool))


def _gather_points(xyz: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """XYZ [F, N, 3] at flat pixel indices [F, N], in xyz's dtype."""
    flat = xyz.reshape(xyz.shape[0], -1, 3)
    return torch.gather(flat, 1, index[..., None].expand(-1, -1, 3))


def _gather(xyz: torch.Tensor, mask: torch.Tensor | None, index: torch.Tensor, usable: torch.Tensor) -> Samples:
    """Samples at flat pixel indices [F, N]; usable [F, N] bool marks real samples (others: padding)."""
    points = torch.where(usable[..., None], _gather_points(xyz, index).to(torch.float64), 0.0)
    weights = usable.to(torch.float64)
    if mask is not None and mask.is_floating_point():
        confidence = torch.gather(mask.flatten(1), 1, index.to(mask.device)).to(device=xyz.device,
                                                                                dtype=torch.float64)
        weights = torch.where(usable, confidence, 0.0)
    return Samples(index, points, weights)


def scene_normalization(samples: Samples, input_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Robust centre [3] and scale [] of the sampled points, so the solve runs on unit-size data,
    and the rounding precision of the input points in those units."""
    inside = samples.points[samples.weights > 0]
    centre = inside.median(dim=0).values
    spread = length(inside - centre).median()
    if not spread > 0:
        raise ValueError(f"Half or more of the {len(inside)} usable XYZ points sit at one place "
                         f"{tuple(round(v, 6) for v in centre.tolist())}: the point maps are flat or empty (all "
                         "zero?), and cameras cannot be fitted to them. Check how the scene was made.")
    scale = spread.clamp(min=torch.finfo(inside.dtype).tiny)
    magnitude = max(float(length(inside).median() / scale), 1.0)
    return centre, scale, _PRECISION_ULPS * torch.finfo(input_dtype).eps * magnitude
