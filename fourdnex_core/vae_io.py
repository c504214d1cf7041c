"""Wan VAE in and out: encode videos to normalized latents, decode them back, with progress.

Wan's latents are used normalized per channel: z_hat = (z - latents_mean) / latents_std, with
the 16 statistics stored in the VAE config.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from torch import nn
from tqdm.auto import tqdm

from .representation import TEMPORAL_COMPRESSION


WAN21_VAE_CONFIG = Path(__file__).parent / "configs" / "wan2.1_vae.json"


@functools.cache
def _wan21_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    config = json.loads(WAN21_VAE_CONFIG.read_text(encoding="utf-8"))
    return tuple(config["latents_mean"]), tuple(config["latents_std"])


def wan_latent_stats() -> tuple[torch.Tensor, torch.Tensor]:
    """Wan2.1 VAE's per-channel latent mean and std, each [16] float32 (from its released config)."""
    mean, std = _wan21_stats()
    return torch.tensor(mean), torch.tensor(std)


def _latent_stats(vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan's per-channel latent mean and std, each [1, z_dim, 1, 1, 1] on ``like``'s device/dtype."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
    return mean, std


@contextlib.contextmanager
def _progress_per_call(module: nn.Module, total: int, desc: str, enabled: bool) -> Iterator[None]:
    """Tick a progress bar once per forward call of ``module`` (the VAE runs it per frame chunk)."""
    with tqdm(total=total, desc=desc, disable=not enabled) as bar:

        def tick(*_) -> None:  # returns None: the module's output is left as it is
            bar.update()

        handle = module.register_forward_hook(tick)
        try:
            yield
        finally:
            handle.remove()


def _module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


@torch.no_grad()
def encode_video(vae: AutoencoderKLWan, video: torch.Tensor, *, progress: bool = True) -> torch.Tensor:
    """Encode a video to Wan-normalized latents (the distribution's mode, as Wan I2V does).

    Args:
        video: [B, 3, F, H, W] in [-1, 1], F = 4k+1.
    Returns:
        [B, 16, (F-1)/4+1, H/8, W/8] float32 latents, normalized with Wan's statistics.
    """
    device, dtype = _module_device_dtype(vae)
    chunks = 1 + (video.shape[2] - 1) // TEMPORAL_COMPRESSION
    total = chunks if not vae.use_tiling else None
    with _progress_per_call(vae.encoder, total, "VAE encode", progress):
        latent = vae.encode(video.to(device=device, dtype=dtype)).latent_dist.mode()
    latent = latent.float()
    mean, std = _latent_stats(vae, latent)
    return (latent - mean) / std


@torch.no_grad()
def decode_latent(vae: AutoencoderKLWan, latent: torch.Tensor, *, progress: bool = True) -> torch.Tensor:
    """Decode Wan-normalized latents [B, 16, f, h, w] to a video [B, 3, 4(f-1)+1, 8h, 8w] in [-1, 1]."""
    device, dtype = _module_device_dtype(vae)
    mean, std = _latent_stats(vae, latent.float())
    raw = latent.float() * std + mean
    total = latent.shape[2] if not vae.use_tiling else None
    with _progress_per_call(vae.decoder, total, "VAE decode", progress):
        video = vae.decode(raw.to(device=device, dtype=dtype), return_dict=False)[0]
    return video.float().clamp(-1.0, 1.0)


