"""``fourdnex convert-lora``: the released LoRA + domain embeddings -> one .safetensors file."""

from __future__ import annotations

import argparse
from pathlib import Path

from fourdnex_core.lora.convert import convert_release_lora


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert-lora",
        help="write the 4DNeX LoRA and its domain embeddings as one .safetensors file",
        description="Combine pytorch_lora_weights.safetensors and learnable_domain_embeddings.pt into one "
        ".safetensors file with alpha stored per module, so strength 1.0 reproduces the release.",
    )
    parser.add_argument("lora", type=Path, metavar="LORA_FILE", help="LoRA .safetensors (diffusers or ComfyUI format)")
    parser.add_argument("--domain-embeddings", type=Path, required=True, metavar="PT",
                        help="learnable_domain_embeddings.pt shipped with the LoRA (read with weights_only)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT.safetensors", help="file to write")
    parser.add_argument("--alpha-over-rank", type=float, default=None, metavar="RATIO",
                        help="alpha/rank to store for modules whose file has no alpha (default: 0.5 for a "
                        "diffusers file, the 4DNeX release; 1.0 otherwise)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    return parser


def run(args: argparse.Namespace) -> int:
    convert_release_lora(
        args.lora,
        args.domain_embeddings,
        args.out,
        alpha_over_rank_if_missing=args.alpha_over_rank,
        overwrite=args.force,
    )
    return 0
