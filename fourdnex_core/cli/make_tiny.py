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
    parser.add_argument(
        "--full-size-encoders", action="store_true",
        help="write full-size random-weight UMT5-XXL (text_encoders/umt5_xxl_fp16.safetensors, fp16, with the "
             "tiny tokenizer) and CLIP ViT-H/14 (clip_vision/clip_vision_h.safetensors, fp16), the sizes ComfyUI's "
             "own CLIPLoader (type wan) and CLIPVisionLoader build, and a tiny transformer that takes their "
             "4096/1280-wide embeddings. Writes about 13 GB and takes minutes (2 on 2 CPU cores, 2.6 GB of memory); "
             "only the ComfyUI models/ tree and the 4DNeX LoRA are written, no diffusers model folder.",
    )
    parser.add_argument(
        "--native", action="store_true",
        help="make every ComfyUI file loadable by ComfyUI's own loaders too (UNETLoader, VAELoader, CLIPLoader, "
             "CLIPVisionLoader), for the native workflows 6 and 7: a small Wan2.1 I2V of width 256 (ComfyUI derives "
             "heads as width // 128), a small Wan2.1 VACE beside it (diffusion_models/wan2.1_vace_14B_fp16.safetensors, "
             "taken as WAN21_Vace) and the full-size Wan2.1 VAE with random weights; implies --full-size-encoders.",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    tiny = make_tiny_models(args.dir, seed=args.seed, full_size_encoders=args.full_size_encoders, native=args.native)
    if not (args.full_size_encoders or args.native):
        print(f"diffusers model: {tiny.diffusers_model}")
    print(f"4DNeX LoRA (released layout): {tiny.diffusers_lora}\nComfyUI models: {tiny.comfy_models}")
    return 0
