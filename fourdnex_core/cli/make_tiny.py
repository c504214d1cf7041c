"""``fourdnex make-tiny DIR``: write the tiny random-weight model set in both layouts."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..tiny import make_tiny_models


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "make-tiny", help="write a tiny random-weight model set (diffusers + ComfyUI layouts)",
        description="Build a tiny random-weight Wan2.1 I2V + 4DNeX LoRA set and write it as diffusers folders "
                    "and as a ComfyUI models/ tree with the real file names.",
    )
    parser.add_argument("dir", type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return parser


def run(args: argparse.Namespace) -> int:
    tiny = make_tiny_models(args.dir, seed=args.seed)
    print(f"diffusers model: {tiny.diffusers_model}\n4DNeX LoRA (released layout): {tiny.diffusers_lora}\n"
          f"ComfyUI models: {tiny.comfy_models}")
    return 0
