"""Devices and precisions by name, as the CLI, the nodes and the trainer take them."""

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


def dtype_named(name: str) -> torch.dtype:
    """``"bf16"`` / ``"fp16"`` / ``"fp32"`` -> the torch dtype."""
    if name not in DTYPES:
        raise ValueError(f"Unknown precision {name!r}; use one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 on CUDA, fp32 on the CPU (CPU bf16 matmuls are slow); otherwise :func:`dtype_named`."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return dtype_named(name)
