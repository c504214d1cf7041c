"""The memory and speed options of ``fourdnex generate`` / ``demo`` (see the README's "Low VRAM").

``--low-vram auto`` starts from :func:`~fourdnex_core.lowvram.recommended_options` for the GPU's
memory; every other flag overrides one field of :class:`~fourdnex_core.lowvram.LowVramOptions`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch

from ..lowvram import EmbeddingCache, LowVramOptions, OffloadPolicy, recommended_options
from ..lowvram.attention import BACKENDS
from ..lowvram.block_swap import GIB
from ..lowvram.options import FP8_MODES

logger = logging.getLogger(__name__)

# argparse destination -> LowVramOptions field, for the flags that override one field.
OVERRIDES = {
    "blocks_to_swap": "blocks_to_swap",
    "fp8": "fp8",
    "attention": "attention",
    "compile": "compile",
    "step_cache": "step_cache_threshold",
    "vae_tiling": "vae_tiling",
    "offload": "offload",
}


def block_count(text: str) -> int | str:
    """``--blocks-to-swap``: a block count >= 0, or ``auto``."""
    if text == "auto":
        return text
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a block count or 'auto', got {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"the block count must be >= 0, got {count}")
    return count


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``memory and speed`` option group (all off by default: everything resident, exact)."""
    group = parser.add_argument_group("memory and speed (README: Low VRAM; all off by default)")
    group.add_argument("--low-vram", choices=("off", "auto"), default="off",
                       help="auto: the recommended settings for this GPU's memory (the flags below override them)")
    group.add_argument("--blocks-to-swap", type=block_count, metavar="N|auto",
                       help="transformer blocks kept in CPU memory and copied in just in time (exact)")
    group.add_argument("--fp8", choices=FP8_MODES, help="fp8 weights (half the memory) or fp8 weights + matmuls")
    group.add_argument("--attention", choices=tuple(BACKENDS), help="attention kernel (default sdpa)")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile the transformer blocks")
    group.add_argument("--step-cache", type=float, metavar="THRESHOLD",
                       help="skip transformer steps whose input barely changed (0 = off; 0.1-0.3)")
    group.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction, default=None,
                       help="encode/decode in overlapping 256-pixel tiles")
    group.add_argument("--offload", choices=[policy.value for policy in OffloadPolicy],
                       help="text encoder, CLIP vision and VAE after their stage: keep on the GPU, move to "
                            "CPU memory, or free (loaded again when needed); with cpu or free the transformer "
                            "is on the GPU for the sampling only")
    group.add_argument("--embedding-cache", type=Path, metavar="DIR",
                       help="keep prompt embeddings in DIR: a prompt seen before never loads the text encoder")


def memory_options(args: argparse.Namespace, device: torch.device) -> LowVramOptions:
    """The :class:`LowVramOptions` that ``args`` ask for on ``device``."""
    options = LowVramOptions()
    if args.low_vram == "auto":
        if device.type == "cuda":
            total_gb = torch.cuda.get_device_properties(device).total_memory / GIB
            options = recommended_options(total_gb)
            logger.info("--low-vram auto for %.0f GB: %s", total_gb, options)
        else:
            logger.info("--low-vram auto on %s: no GPU memory to save; the memory options stay off.", device)
    overrides = {field: getattr(args, name) for name, field in OVERRIDES.items() if getattr(args, name) is not None}
    return dataclasses.replace(options, **overrides)


def embedding_cache(args: argparse.Namespace) -> EmbeddingCache | None:
    """The on-disk prompt-embedding cache of ``--embedding-cache``, if given."""
    return EmbeddingCache(directory=args.embedding_cache) if args.embedding_cache is not None else None
