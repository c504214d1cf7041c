"""Which points a validity mask or a confidence map keeps: the one rule, used by post-optimization
and by point clouds.

A mask is either

- a validity mask: bool (or integer) ``[...]``, True (non-zero) keeps the point. It holds no
  confidence, so a ``min_confidence`` threshold does not apply to it; or
- a confidence map: float ``[...]``, each value finite and >= 0, or NaN. A point is kept where
  its confidence is above 0 and at least ``min_confidence``; 0 and NaN drop it. Negative or
  infinite values are an error (a log-confidence must be exponentiated first).

``min_confidence`` must be >= 0. Callers that have no use for a threshold without a confidence
map say so themselves (:func:`~fourdnex_core.geometry.postopt.post_optimize` refuses a
threshold with a bool mask; a point-cloud filter applies its threshold only to scenes that carry
confidence).
"""

from __future__ import annotations

import numpy as np
import torch


def check_min_confidence(min_confidence: float) -> None:
    """Raise a ValueError unless ``min_confidence`` is a number >= 0."""
    if not min_confidence >= 0:
        raise ValueError(f"min_confidence must be >= 0, got {min_confidence}.")


def check_confidence(mask: torch.Tensor | np.ndarray) -> None:
    """Raise a ValueError naming the fix when a confidence map (a float ``mask``) holds negative
    or infinite values. Validity masks (bool or integer) pass. One pass over the map."""
    mask = torch.as_tensor(mask)
    if not mask.is_floating_point():
        return
    low = torch.nan_to_num(mask, nan=0.0, posinf=-1.0, neginf=-1.0).amin() if mask.numel() else 0.0
    if low < 0:
        finite = mask[torch.isfinite(mask)]
        lowest = float(finite.min()) if finite.numel() else float("nan")
        raise ValueError(f"Confidence must be finite and >= 0 (0 or NaN drops a point), got values down to {lowest} "
                         "or infinite ones; pass probabilities, or exp() of a log-confidence.")


def mask_keeps(mask: torch.Tensor | np.ndarray, min_confidence: float = 0.0, *, checked: bool = False):
    """The points a validity mask or confidence map keeps (see the module docstring for the rule).

    mask: [...] bool / integer validity, or float confidence; a torch tensor or a numpy array.
    min_confidence: threshold for a confidence map (ignored for a validity mask).
    checked: the caller already ran :func:`check_confidence` on this map (skips that pass).
    Returns [...] bool, of the input's kind (tensor or array).
    """
    check_min_confidence(min_confidence)
    is_numpy = isinstance(mask, np.ndarray)
    values = torch.from_numpy(mask) if is_numpy else mask
    if not values.is_floating_point():
        keep = values.to(torch.bool)
    else:
        if not checked:
            check_confidence(values)
        keep = values > 0
        if min_confidence > 0:
            keep &= values >= min_confidence
    return keep.numpy() if is_numpy else keep
