"""``fourdnex demo --out DIR``: build the tiny model set and generate from the shipped example image."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..atomic_write import check_output_folder
from ..tiny import make_tiny_models
from .generate import OUTPUT_FILES, add_generation_arguments, generate, model_locations, run_settings, write_outputs

EXAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "example.png"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="run generate end to end on tiny random weights (no downloads)",
        description="Write the tiny model set into OUT/models and run `generate` on the example image with it, "
                    "from the ComfyUI layout. The output is noise-like (random weights) but every stage runs.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--image", type=Path, default=EXAMPLE_IMAGE, help="input image (default: the shipped example)")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace an earlier demo's {', '.join(OUTPUT_FILES)} in --out (refused without it)")
    add_generation_arguments(parser)
    parser.set_defaults(prompt="a red ball rolling on a checkered floor", frames=9, height=64, width=96, steps=4)
    return parser


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    check_output_folder(args.out, OUTPUT_FILES, overwrite=args.overwrite)  # before anything is written
    tiny = make_tiny_models(args.out / "models")
    args.models, args.lora = tiny.comfy_models, tiny.comfy_lora
    for name in ("transformer", "vae", "text_encoder", "clip_vision", "tokenizer", "domain_embeddings"):
        setattr(args, name, None)
    args.lora_strength = None  # the preset's
    result = generate(args, model_locations(args))
    write_outputs(args.out, result, run_settings(args, result, time.perf_counter() - start), args.fps)
    print(f"demo done: {args.out}/rgb.mp4, xyz.mp4, scene.npz, run.json (tiny random weights from {tiny.root})")
    return 0
