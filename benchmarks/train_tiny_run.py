"""The tiny end-to-end training run: synthetic clips -> prepare -> a few hundred CPU steps.

Writes the tiny random-weight model set, two synthetic 4D clips (simple layout), prepares them
with the real encoders and trains a LoRA on the tiny transformer loaded from its ComfyUI file.
Prints, as Markdown for BENCHMARKS.md:

* the loss on fixed held-out draws (the same clips, noise and sigmas for every model) of the
  zero-velocity prediction (1 + E[x0^2]: what a model must beat to have learned the data), of
  the untrained base model and of the trained LoRA;
* the training loss curve (means over windows of steps);
* how much the trained LoRA, read back from its file, changes the sampler's output.

The tiny transformer (2 blocks, width 24, random frozen weights) is far from Wan2.1-14B: a LoRA on
the attention projections alone (the release's targets, the trainer's default) mostly learns to
cancel the random base output. This run therefore also puts the LoRA on the FFN and the output
projection, with a larger learning rate, so that learning the data is visible in a few hundred
steps. The trainer's release defaults (rank 64, alpha 32, attention targets, lr 2e-5) are unchanged.

    PYTHONPATH=. python benchmarks/train_tiny_run.py --steps 300 --workdir /tmp/fourdnex_train_tiny

With ``--memory-variants`` it instead trains the same run once per ``[memory]`` option (block swap,
fp8 base weights, another attention kernel; all with gradient checkpointing, which block swap
needs) and prints each one's held-out loss and how far its trained tensors are from the plain run's.
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
from fourdnex_train.cache import list_cache, read_cached_clip
from fourdnex_train.config import TrainConfig, config_from_dict
from fourdnex_train.dataset import LatentDataset
from fourdnex_train.flow_matching import TimestepSampling, evaluation_loss, zero_velocity
from fourdnex_train.lora_setup import trainable_state_dict
from fourdnex_train.prepare import prepare_dataset
from fourdnex_train.samples import conditioning_of
from fourdnex_train.synthetic_data import write_synthetic_dataset
from fourdnex_train.trainer import Trainer

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]  # the release's targets (the trainer's default)
TARGETS = {"wide": [*ATTENTION, "ffn.net.0.proj", "ffn.net.2", "proj_out"], "attention": ATTENTION}
HELD_OUT_SEED = 10_000


MEMORY_VARIANTS = {
    "plain": {},
    "block swap, 1 of 2 blocks": {"blocks_to_swap": 1},
    "fp8 base weights": {"fp8": "weights"},
    "attention: math": {"attention": "math"},
}


def tiny_run_config(workdir: Path, models: Path, *, steps: int, lr: float, rank: int, targets: list[str],
                    memory: dict | None = None, output: str = "output") -> TrainConfig:
    """The benchmark's config: 9 x 32 x 48 clips, a rank-``rank`` LoRA (alpha = rank) on ``targets``."""
    return config_from_dict({
        "memory": memory or {},
        "data": {"root": str(workdir / "clips"), "cache_dir": str(workdir / "cache"), "num_frames": 9,
                 "height": 32, "width": 48, "cache_dtype": "fp32"},
        "models": {"root": str(models)},
        "lora": {"rank": rank, "alpha": float(rank), "target_modules": targets},
        "optim": {"lr": lr, "warmup_steps": 10},
        "train": {"output_dir": str(workdir / output), "max_steps": steps, "seed": 0},  # checkpointing on
        "checkpoint": {"every_n_steps": 100, "resume": "none"},
        "log": {"tensorboard": False, "progress": False},
    })


def print_loss_table(losses: list[float], window: int) -> None:
    print("| steps | mean loss | min | max |\n|---|---|---|---|")
    for start in range(0, len(losses), window):
        part = losses[start:start + window]
        print(f"| {start + 1}-{start + len(part)} | {sum(part) / len(part):.4f} | {min(part):.4f} | {max(part):.4f} |")


def sampler_change(base: torch.nn.Module, lora_path: Path, cache_dir: Path) -> tuple[float, float]:
    """(mean |delta|, mean |output|) of 10 UniPC steps without CFG, without and with the trained LoRA."""
    clip = read_cached_clip(list_cache(cache_dir)[0])
    settings = SamplingSettings(num_inference_steps=10, guidance_scale=1.0)
    before = sample(base, conditioning_of(clip), settings, progress=False)
    lora = read_lora(lora_path, base)
    set_domain_embeddings(base, lora.domain_embeddings)
    handle = attach_lora(base, list(lora.layers))
    after = sample(base, conditioning_of(clip), settings, progress=False)
    handle.remove()
    return float((after - before).abs().mean()), float(before.abs().mean())


def relative_deviation(trained: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(relative L2, max abs) difference of all trained tensors from the reference run's."""
    difference = torch.cat([(trained[key] - reference[key]).flatten() for key in reference])
    norm = torch.cat([reference[key].flatten() for key in reference]).norm()
    return float(difference.norm() / norm), float(difference.abs().max())


def print_memory_variants(args, tiny, held_out, sampling) -> None:
    """Train once per :data:`MEMORY_VARIANTS` entry; print held-out loss and deviation from "plain"."""
    print(f"| [memory] | held-out loss (step {args.steps}) | trained tensors vs plain: rel L2 | max abs | s/step |")
    print("|---|---|---|---|---|")
    reference = None
    for index, (name, memory) in enumerate(MEMORY_VARIANTS.items()):
        config = tiny_run_config(args.workdir, tiny.comfy_models, steps=args.steps, lr=args.lr, rank=args.rank,
                                 targets=TARGETS[args.targets], memory=memory, output=f"output-memory-{index}")
        started = time.perf_counter()
        trainer = Trainer(config)
        result = trainer.train()
        seconds = (time.perf_counter() - started) / len(result.losses)
        loss = evaluation_loss(trainer.transformer.eval(), held_out, sampling, seed=HELD_OUT_SEED)
        trained = trainable_state_dict(trainer.transformer)
        reference = reference or trained
        deviation, worst = relative_deviation(trained, reference)
        print(f"| {name} | {loss:.4f} | {deviation:.3g} | {worst:.3g} | {seconds:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", choices=sorted(TARGETS), default="wide",
                        help="wide: attention + FFN + proj_out; attention: the release's targets")
    parser.add_argument("--held-out", type=int, default=64, help="fixed (clip, noise, sigma) draws for the losses")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fourdnex_train_tiny"))
    parser.add_argument("--memory-variants", action="store_true",
                        help="train once per [memory] option and compare with the plain run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)

    tiny = make_tiny_models(args.workdir / "models")
    write_synthetic_dataset(args.workdir / "clips", num_clips=2, num_frames=9, height=40, width=60)
    config = tiny_run_config(args.workdir, tiny.comfy_models, steps=args.steps, lr=args.lr, rank=args.rank,
                             targets=TARGETS[args.targets])
    started = time.perf_counter()
    report = prepare_dataset(config, progress=False)
    prepare_seconds = time.perf_counter() - started

    dataset = LatentDataset(list_cache(config.data.cache_dir), batch_size=1, seed=HELD_OUT_SEED)
    held_out = [dataset.batch(index) for index in range(args.held_out)]
    sampling = TimestepSampling()
    base = load_transformer(tiny.comfy_models, model_cls=FourDNeXTransformer3DModel, dtype=torch.float32).eval()
    zero_loss = evaluation_loss(zero_velocity, held_out, sampling, seed=HELD_OUT_SEED)
    untrained_loss = evaluation_loss(base, held_out, sampling, seed=HELD_OUT_SEED)
    if args.memory_variants:
        print(f"zero velocity {zero_loss:.4f}, untrained base {untrained_loss:.4f}\n")
        print_memory_variants(args, tiny, held_out, sampling)
        return

    started = time.perf_counter()
    trainer = Trainer(config)
    result = trainer.train()
    train_seconds = time.perf_counter() - started
    trained_loss = evaluation_loss(trainer.transformer.eval(), held_out, sampling, seed=HELD_OUT_SEED)

    losses = result.losses
    print(f"prepare: {report.summary()} ({prepare_seconds:.1f} s); train: {len(losses)} steps in "
          f"{train_seconds:.1f} s ({train_seconds / len(losses):.3f} s/step, CPU, 2 threads)\n")
    print(f"| held-out loss ({args.held_out} fixed draws) | zero velocity | untrained base | "
          f"trained LoRA (step {result.step}) |\n|---|---|---|---|")
    print(f"| mean MSE | {zero_loss:.4f} | {untrained_loss:.4f} | {trained_loss:.4f} |\n")
    print_loss_table(losses, args.window)
    change, magnitude = sampler_change(base, result.lora_path, config.data.cache_dir)
    print(f"\nsampler output change with the trained LoRA: mean |delta| = {change:.4f} "
          f"(output mean |x| = {magnitude:.4f})")


if __name__ == "__main__":
    main()
