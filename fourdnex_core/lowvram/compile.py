"""torch.compile for the transformer blocks (regional compilation).

The 40 blocks of Wan are identical, so compiling each block's ``forward`` costs one compilation
(the others reuse it: same code, same shapes) and speeds up every block. Only ``forward`` is
compiled: the blocks' hooks (block swap's weight moves, an attached LoRA) run eagerly around it,
and the embedding/head stay eager. Undo with :func:`uncompile_blocks`.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil

import torch
from torch import nn

from .block_swap import transformer_blocks

logger = logging.getLogger(__name__)

COMPILE_MODES = (None, "default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead")
_COMPILED = "_fourdnex_compiled"


def check_compile_backend(backend: str, device: torch.device | str) -> None:
    """Clear errors for the usual missing pieces (Triton on CUDA, a C++ compiler on the CPU)."""
    if backend != "inductor":
        return
    device = torch.device(device)
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise RuntimeError("torch.compile (inductor) on CUDA needs Triton: pip install triton "
                           "(triton-windows on Windows), or turn compile off.")
    if device.type == "cpu" and not any(shutil.which(name) for name in ("c++", "g++", "clang++", "cl")):
        raise RuntimeError("torch.compile (inductor) on the CPU needs a C++ compiler (g++ or clang++); install one "
                           "or turn compile off.")


def compile_blocks(
    model: nn.Module,
    device: torch.device | str,
    *,
    mode: str | None = None,
    backend: str = "inductor",
    dynamic: bool | None = False,
    fullgraph: bool = False,
) -> int:
    """Compile every block's ``forward`` of ``model`` (in place); returns the number of blocks.

    Args:
        model: a transformer with a ``blocks`` ModuleList.
        device: where the blocks run (for the backend check).
        mode, backend, dynamic, fullgraph: passed to ``torch.compile``. "reduce-overhead" (CUDA graphs)
            does not mix with block swap (the weights move between calls).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode must be one of {COMPILE_MODES}, got {mode!r}.")
    check_compile_backend(backend, device)
    blocks = transformer_blocks(model)
    for block in blocks:
        if getattr(block, _COMPILED, False):
            continue
        block.forward = torch.compile(block.forward, mode=mode, backend=backend, dynamic=dynamic, fullgraph=fullgraph)
        setattr(block, _COMPILED, True)
    logger.info("torch.compile on for %d blocks (backend %s, mode %s).", len(blocks), backend, mode or "default")
    return len(blocks)


def uncompile_blocks(model: nn.Module) -> int:
    """Restore the eager ``forward`` of every compiled block; returns how many."""
    count = 0
    for block in transformer_blocks(model):
        if vars(block).pop(_COMPILED, False):
            vars(block).pop("forward", None)
            count += 1
    return count
