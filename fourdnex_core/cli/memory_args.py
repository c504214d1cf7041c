"""The memory and speed options of ``fourdnex generate`` / ``demo`` (see the README's "Low VRAM").

``--low-vram auto`` starts from :func:`~fourdnex_core.lowvram.recommended_options` for the GPU's
memory; every other flag overrides one field of :class:`~fourdnex_core.lowvram.LowVramOptions`, and
is generated from that field's declaration (flag, type or choices, help).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch

from ..lowvram import EmbeddingCache, LowVramOptions, recommended_options
from ..lowvram.block_swap import GIB
from ..lowvram.options import options_of

logger = logging.getLogger(__name__)


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


def _flag_settings(field: dataclasses.Field) -> dict:
    """argparse settings of one option's flag: its type or choices, its help; None (not given) by default."""
    meta = field.metadata
    settings = {"dest": field.name, "default": None, "help": meta["help"].replace("%", "%%")}
    if meta["choices"] is not None:
        return {**settings, "choices": meta["choices"]}
    if isinstance(field.default, bool):
        return {**settings, "action": argparse.BooleanOptionalAction}
    parse = block_count if meta["auto"] else type(field.default)
    return {**settings, "type": parse, "metavar": meta["metavar"]}


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``memory and speed`` option group (all off by default: everything resident, exact): one flag per
    option the CLI shows (:func:`~fourdnex_core.lowvram.options.options_of`), plus ``--low-vram`` and
    ``--embedding-cache``."""
    group = parser.add_argument_group("memory and speed (README: Low VRAM; all off by default)")
    group.add_argument("--low-vram", choices=("off", "auto"), default="off",
                       help="auto: the recommended settings for this GPU's memory (the flags below override them)")
    for field in options_of("cli"):
        group.add_argument(field.metadata["cli"], **_flag_settings(field))
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
    overrides = {field.name: getattr(args, field.name) for field in options_of("cli")
                 if getattr(args, field.name) is not None}
    return dataclasses.replace(options, **overrides)


def embedding_cache(args: argparse.Namespace) -> EmbeddingCache | None:
    """The on-disk prompt-embedding cache of ``--embedding-cache``, if given."""
    return EmbeddingCache(directory=args.embedding_cache) if args.embedding_cache is not None else None
