"""``fourdnex-train run``: the LoRA training loop.

One optimizer step = ``gradient_accumulation_steps`` micro-batches of ``batch_size`` clips per
process; the loss is :func:`fourdnex_train.flow_matching.flow_matching_loss`. Every random draw of a
micro-batch (clip order, noise, timesteps) comes from a CPU generator seeded by (seed, micro-batch
index, process rank), so a run resumed from a checkpoint replays the uninterrupted run exactly.

Multi-GPU: start the same command with ``accelerate launch -m fourdnex_train run CONFIG``; each process
takes its own share of every global batch and gradients are averaged by accelerate's DDP
wrapper. Only the main process logs, samples and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from torch import nn
from tqdm.auto import tqdm

from fourdnex_core.loading.detect import inspect_transformer
from fourdnex_core.loading.fp8 import FP8Linear
from fourdnex_core.loading.transformer_loader import load_transformer
from fourdnex_core.loading.vae_loader import load_vae
from fourdnex_core.lowvram import (
    apply_fp8_weights,
    apply_model_options,
    offloaded_checkpoint,
    place_transformer,
    prepare_vae,
)
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from fourdnex_train.cache import list_cache
from fourdnex_train.checkpoint import CheckpointManager, rng_state, set_rng_state
from fourdnex_train.config import ConfigError, TrainConfig
from fourdnex_train.dataset import LatentDataset
from fourdnex_train.devices import autocast_dtype, dtype_named, resolve_device, weight_dtype
from fourdnex_train.flow_matching import TimestepSampling, flow_matching_loss
from fourdnex_train.logging_utils import MetricsLogger
from fourdnex_train.lora_setup import (
    add_lora,
    load_trainable_state_dict,
    trainable_state_dict,
    write_diffusers_lora,
    write_trained_lora,
)
from fourdnex_train.samples import generate_samples

logger = logging.getLogger(__name__)

_SEED_MIX = 1_000_003


class TrainingDivergedError(RuntimeError):
    """The loss or the gradients became NaN or infinite; nothing of the diverged step was applied
    or written (the message names the step, the clips and the likely cause)."""


@dataclasses.dataclass
class TrainResult:
    """lora_path: the final single-file LoRA; losses: the loss of every step this call ran."""

    lora_path: Path
    losses: list[float]
    step: int


def micro_batch_generator(seed: int, micro_index: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of one micro-batch's noise and timesteps: a pure function of its arguments."""
    return torch.Generator().manual_seed((seed * _SEED_MIX + micro_index) * 64 + rank)


def load_base_transformer(config: TrainConfig, device: torch.device) -> FourDNeXTransformer3DModel:
    """The frozen base transformer from ``[models]``: ``models.dtype`` on GPU with autocast, fp32 on
    CPU or with ``mixed_precision = "fp32"`` (see :func:`fourdnex_train.devices.weight_dtype`). Loaded to the
    CPU when blocks will be swapped (the whole model may not fit the GPU); fp8 files stay fp8 with
    ``[memory] fp8 = "weights"``."""
    if config.models.root is None and config.models.transformer is None:
        raise ConfigError("`fourdnex-train run` needs the base transformer: set [models] root (a diffusers "
                          "Wan2.1-I2V folder or ComfyUI models/) or [models] transformer (its file).")
    dtype = weight_dtype(config.models.dtype, device, config.train.mixed_precision)
    if dtype != dtype_named(config.models.dtype) and device.type != "cpu":
        logger.info("mixed_precision = \"fp32\": loading the base transformer in fp32 (not models.dtype = %s).",
                    config.models.dtype)
    memory, source = config.memory, config.models.source("transformer")
    if memory.fp8 == "off" and inspect_transformer(source).fp8 != "none":
        logger.warning("%s holds fp8 weights; with [memory] fp8 = \"off\" they are upcast to %s (twice the memory). "
                       "Set [memory] fp8 = \"weights\" to train on them as they are.", source.path.name,
                       str(dtype).removeprefix("torch."))
    return load_transformer(source, model_cls=FourDNeXTransformer3DModel, dtype=dtype,
                            device="cpu" if memory.blocks_to_swap else device, keep_fp8=memory.fp8 == "weights")


def check_weight_precision(transformer: nn.Module, autocast: torch.dtype | None) -> None:
    """Without autocast every floating weight must compute in fp32 (fp8 layers: their compute dtype);
    raise a :class:`ConfigError` otherwise."""
    if autocast is not None:
        return
    fp8_weights = {id(m.weight) for m in transformer.modules() if isinstance(m, FP8Linear)}
    dtypes = [p.dtype for p in transformer.parameters() if p.is_floating_point() and id(p) not in fp8_weights]
    dtypes += [m.compute_dtype for m in transformer.modules() if isinstance(m, FP8Linear)]
    low = sorted({str(dtype).removeprefix("torch.") for dtype in dtypes if dtype != torch.float32})
    if low:
        raise ConfigError(f"The base transformer has {'/'.join(low)} weights but training runs without autocast "
                          "(train.mixed_precision = \"fp32\", or the CPU), where they fail on fp32 activations. "
                          "Pass a float32 model (model.float()) or train on a GPU with mixed_precision = \"bf16\".")


class Trainer:
    """Builds everything from a :class:`TrainConfig`; :meth:`train` runs to ``max_steps``.

    ``transformer``: an already built base :class:`FourDNeXTransformer3DModel` (tests); loaded
    from ``[models]`` otherwise.
    """

    def __init__(self, config: TrainConfig, transformer: nn.Module | None = None):
        config.require("data.cache_dir", "train.output_dir", command="run")
        self.config = config
        loop = config.train
        self.accelerator = Accelerator(cpu=resolve_device(loop.device).type == "cpu", mixed_precision="no")
        self.device = self.accelerator.device
        self.autocast = autocast_dtype(loop.mixed_precision, self.device)
        self.output_dir = Path(loop.output_dir)
        torch.manual_seed(loop.seed)

        self.transformer = transformer if transformer is not None else load_base_transformer(config, self.device)
        memory = config.memory.low_vram_options()
        apply_fp8_weights(self.transformer, memory)  # before the LoRA: it replaces the Linear layers
        check_weight_precision(self.transformer, self.autocast)
        lora = config.lora
        self.trainable = add_lora(self.transformer, rank=lora.rank, alpha=lora.alpha,
                                  target_modules=lora.target_modules,
                                  train_domain_embeddings=lora.train_domain_embeddings)
        apply_model_options(self.transformer, dataclasses.replace(memory, fp8="off"), self.device)
        if memory.blocks_to_swap != 0 and self._distributed:
            raise ConfigError("[memory] blocks_to_swap works in a single process only (DistributedDataParallel needs "
                              "every weight on the GPU); set it to 0 for multi-GPU training, or train on one GPU.")
        self.block_swap = place_transformer(self.transformer, memory, self.device, keep_trainable=True)
        if loop.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing(
                gradient_checkpointing_func=offloaded_checkpoint if config.memory.offload_activations else None)
        self.transformer.train()
        self.model = self.accelerator.prepare_model(self.transformer) if self._distributed else self.transformer

        self.files = list_cache(config.data.cache_dir)
        self.dataset = LatentDataset(self.files, loop.batch_size, loop.seed, rank=self.accelerator.process_index,
                                     world_size=self.accelerator.num_processes)
        optim = config.optim
        self.optimizer = torch.optim.AdamW(self.trainable, lr=optim.lr, betas=tuple(optim.betas),
                                           weight_decay=optim.weight_decay, eps=optim.eps)
        self.scheduler = get_scheduler(optim.scheduler, self.optimizer, num_warmup_steps=optim.warmup_steps,
                                       num_training_steps=loop.max_steps)
        self.sampling = TimestepSampling(loop.timestep_sampling, loop.logit_mean, loop.logit_std, loop.flow_shift)
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", config.checkpoint.keep_last)
        self.step = 0
        self._vae = None

    @property
    def _distributed(self) -> bool:
        return self.accelerator.num_processes > 1

    @property
    def lora_path(self) -> Path:
        return self.output_dir / f"{self.config.train.output_name}.safetensors"

    def _metadata(self) -> dict[str, str]:
        return {"fourdnex.training_config": json.dumps(self.config.to_dict(), default=str),
                "fourdnex.training_step": str(self.step)}

    # -- checkpoints -------------------------------------------------------------------------

    def training_state(self) -> dict:
        return {"step": self.step, "trainable": trainable_state_dict(self.transformer),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(), "seed": self.config.train.seed}

    def save_checkpoint(self) -> Path | None:
        """Write checkpoint ``self.step`` (main process only; others wait)."""
        folder = None
        if self.accelerator.is_main_process:
            name = self.lora_path.name
            folder = self.checkpoints.save(
                self.step, self.training_state(),
                lambda target: write_trained_lora(target / name, self.transformer, self._metadata()))
        self.accelerator.wait_for_everyone()
        return folder

    def resume(self) -> int:
        """Restore the checkpoint ``[checkpoint] resume`` names ("auto": the latest, "none": none)."""
        mode = self.config.checkpoint.resume
        if mode == "none":
            if self.checkpoints.latest() is not None:
                logger.warning("resume = \"none\": starting over although %s holds checkpoints.", self.checkpoints.folder)
            return self.step
        folder = self.checkpoints.latest() if mode == "auto" else Path(mode)
        if folder is None:
            return self.step
        state = self.checkpoints.load(folder)
        if state["seed"] != self.config.train.seed:
            logger.warning("The checkpoint was trained with seed %d, this run uses %d: the data order changes.",
                           state["seed"], self.config.train.seed)
        load_trainable_state_dict(self.transformer, state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        logger.info("Resumed from %s at step %d.", folder, self.step)
        return self.step

    # -- the loop ----------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        """One optimizer step (with gradient accumulation); returns its metrics."""
        loop = self.config.train
        accumulation = loop.gradient_accumulation_steps
        loss_total, sigma_total = 0.0, 0.0
        for micro in range(accumulation):
            index = self.step * accumulation + micro
            batch = self.dataset.batch(index).to(self.device)
            generator = micro_batch_generator(loop.seed, index, self.accelerator.process_index)
            sync = contextlib.nullcontext()
            if self._distributed and micro < accumulation - 1:
                sync = self.model.no_sync()
            with sync:
                loss, sigma = flow_matching_loss(self.model, batch, self.sampling, generator,
                                                 autocast_dtype=self.autocast)
                if not torch.isfinite(loss.detach()):
                    raise self._diverged(f"the loss is {float(loss.detach())}", index)
                (loss / accumulation).backward()
            loss_total += float(loss.detach()) / accumulation
            sigma_total += float(sigma.mean()) / accumulation
        max_norm = self.config.optim.max_grad_norm or float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, max_norm))
        if not math.isfinite(grad_norm):
            raise self._diverged(f"the gradient norm is {grad_norm} (the loss was {loss_total:.4g})",
                                 self.step * accumulation + accumulation - 1)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self._distributed:
            loss_total = float(self.accelerator.reduce(torch.tensor(loss_total, device=self.device), "mean"))
        return {"loss": loss_total, "lr": lr, "grad_norm": grad_norm, "sigma_mean": sigma_total}

    def _diverged(self, what: str, micro_index: int) -> TrainingDivergedError:
        """The error for a non-finite step: which step and clips, the likely causes, what is kept."""
        clips = [self.files[i].stem for i in self.dataset.clip_indices(micro_index)]
        latest = self.checkpoints.latest()
        kept = (f"the checkpoint {latest} is intact (if the loss was rising before it, resume from an earlier one "
                "with [checkpoint] resume = PATH, or start over with resume = \"none\")"
                if latest is not None else "no checkpoint was written yet")
        lr = self.scheduler.get_last_lr()[0]
        return TrainingDivergedError(
            f"Training diverged at step {self.step + 1}: {what} (clips {', '.join(clips)}). Likely cause: the "
            f"learning rate {lr:.3g} is too high for this run (lower [optim] lr, e.g. to {lr / 10:.3g}, or raise "
            "warmup_steps / set max_grad_norm), or those clips' data is broken (check them, or prepare them "
            f"again). Nothing of this step was applied and no LoRA was written; {kept}.")

    def train(self, *, progress: bool | None = None) -> TrainResult:
        """Resume if configured, train to ``max_steps``, write the LoRA; returns the result."""
        loop, every = self.config.train, self.config.checkpoint.every_n_steps
        self.resume()
        main = self.accelerator.is_main_process
        metrics = MetricsLogger(self.output_dir, resume_step=self.step,
                                tensorboard=self.config.log.tensorboard) if main else None
        show = self.config.log.progress if progress is None else progress
        losses = []
        bar = tqdm(total=loop.max_steps, initial=self.step, desc="4DNeX LoRA", disable=not (show and main))
        try:
            while self.step < loop.max_steps:
                started = time.perf_counter()
                values = self.train_step()
                values["seconds"] = time.perf_counter() - started
                losses.append(values["loss"])
                if metrics is not None:
                    metrics.log(self.step, values)
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4f}")
                if every and self.step % every == 0 and self.step < loop.max_steps:
                    self.save_checkpoint()
                self._maybe_sample()
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
        self.save_checkpoint()
        self._export()
        return TrainResult(lora_path=self.lora_path, losses=losses, step=self.step)

    def _maybe_sample(self) -> None:
        settings = self.config.sample
        if not settings.every_n_steps or self.step % settings.every_n_steps or not self.accelerator.is_main_process:
            return
        generate_samples(self.transformer, self.files, settings, self.output_dir / "samples", self.step,
                         device=self.device, dtype=self.autocast or torch.float32, vae=self._sample_vae())

    def _sample_vae(self):
        """The VAE for decoding samples (loaded on first use), or None when decoding is off."""
        if self.config.sample.decode and self._vae is None:
            self._vae = load_vae(self.config.models.source("vae"), dtype=torch.float32, device=self.device)
            prepare_vae(self._vae, self.config.memory.low_vram_options())
        return self._vae if self.config.sample.decode else None

    def _export(self) -> None:
        if not self.accelerator.is_main_process:
            return
        write_trained_lora(self.lora_path, self.transformer, self._metadata())
        logger.info("Wrote the trained LoRA to %s.", self.lora_path)
        if self.config.train.save_diffusers_format:
            lora = self.config.lora
            folder = write_diffusers_lora(self.output_dir / "diffusers", self.transformer, rank=lora.rank,
                                          alpha=lora.alpha, target_modules=lora.target_modules)
            logger.info("Wrote the diffusers-layout LoRA to %s.", folder)
