"""Devices and precisions by name, as the CLI, the nodes, the loaders and the trainer take them.

:data:`DTYPES` is the one table of precision names (``bf16``, ``fp16``, ``fp32``); ``"auto"`` is
resolved by :func:`resolve_dtype` (and, for the text encoder, by its loader's rule).
"""

from __future__ import annotations

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str) -> torch.device:
    """``"auto"``: the first CUDA GPU when there is one, else the CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {name!r} asked for CUDA, but this torch build sees no GPU; use 'cpu' or 'auto'.")
    return device


def dtype_named(name: str | torch.dtype) -> torch.dtype:
    """``"bf16"`` / ``"fp16"`` / ``"fp32"`` (or one of those torch dtypes, returned as it is) -> the
    torch dtype."""
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if isinstance(name, str) and name in DTYPES:
        return DTYPES[name]
    raise ValueError(f"unsupported precision {name!r}; use one of {', '.join(DTYPES)} (or the torch dtype).")


def resolve_dtype(name: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 on CUDA, fp32 on the CPU (CPU bf16 matmuls are slow); otherwise :func:`dtype_named`."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return dtype_named(name)
