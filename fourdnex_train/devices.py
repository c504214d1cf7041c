"""Where training runs and in which precision."""

from __future__ import annotations

import torch

from fourdnex_core.devices import dtype_named, resolve_device

__all__ = ["autocast_dtype", "dtype_named", "resolve_device", "weight_dtype"]


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on GPU for ``"auto"``/``"bf16"``, None (fp32) on CPU or for ``"fp32"``."""
    if mixed_precision == "fp32" or device.type == "cpu":
        return None
    return torch.bfloat16


def weight_dtype(name: str, device: torch.device, mixed_precision: str = "auto") -> torch.dtype:
    """Frozen base weights: the configured dtype on GPU, fp32 on CPU (CPU bf16 matmuls are slow).

    Without autocast (``mixed_precision = "fp32"``) the activations are fp32, and a bf16/fp16
    Linear would fail on them ("expected ... BFloat16 but found Float"), so the weights are fp32
    too whatever ``name`` says.
    """
    if autocast_dtype(mixed_precision, device) is None:
        return torch.float32
    return dtype_named(name)
