"""The tiny end-to-end training run: synthetic clips -> prepare -> a few hundred CPU steps.

Writes the tiny random-weight model set, two synthetic 4D clips (simple layout), prepares them
with the real encoders and trains a LoRA on the tiny transformer loaded from its ComfyUI file.
Prints the loss curve (means over windows of steps) and how much the trained LoRA changes the
sampler's output, as a Markdown table for BENCHMARKS.md.

    python benchmarks/train_tiny_run.py --steps 300 --workdir /tmp/fourdnex_train_tiny
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from fourdnex_core.loading.transformer_loader import load_transformer
from fourdnex_core.lora import attach_lora, read_lora, set_domain_embeddings
from fourdnex_core.sampler import SamplingSettings, sample
from fourdnex_core.tiny import make_tiny_models
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from train.cache import list_cache, read_cached_clip
from train.config import config_from_dict
from train.prepare import prepare_dataset
from train.samples import conditioning_of
from train.synthetic_data import write_synthetic_dataset
from train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fourdnex_train_tiny"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)

    tiny = make_tiny_models(args.workdir / "models")
    write_synthetic_dataset(args.workdir / "clips", num_clips=2, num_frames=9, height=40, width=60)
    config = config_from_dict({
        "data": {"root": str(args.workdir / "clips"), "cache_dir": str(args.workdir / "cache"), "num_frames": 9,
                 "height": 32, "width": 48, "cache_dtype": "fp32"},
        "models": {"root": str(tiny.comfy_models)},
        "lora": {"rank": 8, "alpha": 8.0},
        "optim": {"lr": args.lr, "warmup_steps": 10},
        "train": {"output_dir": str(args.workdir / "output"), "max_steps": args.steps, "seed": 0},
        "checkpoint": {"every_n_steps": 100, "resume": "none"},
        "log": {"tensorboard": False, "progress": False},
    })
    started = time.perf_counter()
    report = prepare_dataset(config, progress=False)
    prepare_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = Trainer(config).train()
    train_seconds = time.perf_counter() - started

    losses = result.losses
    print(f"prepare: {report.summary()} ({prepare_seconds:.1f} s); train: {len(losses)} steps in "
          f"{train_seconds:.1f} s ({train_seconds / len(losses):.3f} s/step, CPU, 2 threads)\n")
    print("| steps | mean loss | min | max |\n|---|---|---|---|")
    for start in range(0, len(losses), args.window):
        window = losses[start:start + args.window]
        print(f"| {start + 1}-{start + len(window)} | {sum(window) / len(window):.4f} | {min(window):.4f} | "
              f"{max(window):.4f} |")

    clip = read_cached_clip(list_cache(config.data.cache_dir)[0])
    settings = SamplingSettings(num_inference_steps=10, guidance_scale=1.0)
    base = load_transformer(tiny.comfy_models, model_cls=FourDNeXTransformer3DModel, dtype=torch.float32).eval()
    before = sample(base, conditioning_of(clip), settings, progress=False)
    lora = read_lora(result.lora_path, base)
    set_domain_embeddings(base, lora.domain_embeddings)
    attach_lora(base, list(lora.layers))
    after = sample(base, conditioning_of(clip), settings, progress=False)
    change = float((after - before).abs().mean())
    print(f"\nsampler output change with the trained LoRA: mean |delta| = {change:.4f} "
          f"(output mean |x| = {float(before.abs().mean()):.4f})")


if __name__ == "__main__":
    main()
