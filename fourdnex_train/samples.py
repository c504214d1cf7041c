"""Sample generation during training, on the cached conditions of the first clips.

Each sample is the sampler's wide latent (``<folder>/step-<n>_<clip>.safetensors``, key
``latent`` [1, 16, f, h, 2w]); with a VAE it is also decoded to ``..._rgb.mp4`` and
``..._xyz.mp4``. Sampling draws its noise from its own seeded CPU generator, so it does not
disturb the training RNG (resume stays exact with samples on).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fourdnex_core.decode import decode_wide_latent
from fourdnex_core.loading.safetensors_io import save_tensors
from fourdnex_core.representation import xyz_to_pixels
from fourdnex_core.sampler import Conditioning, SamplingSettings, sample
from fourdnex_core.video_io import write_video
from fourdnex_train.cache import CachedClip, read_cached_clip
from fourdnex_train.config import SampleConfig

logger = logging.getLogger(__name__)

SAMPLE_FPS = 24


def conditioning_of(clip: CachedClip) -> Conditioning:
    """The sampler's :class:`Conditioning` from a cached clip (no negative prompt: no CFG)."""
    return Conditioning(
        condition=clip.condition[None].float(),
        prompt_embeds=clip.prompt_embeds[None].float(),
        image_embeds=clip.image_embeds[None].float(),
    )


@torch.no_grad()
def generate_samples(
    transformer: nn.Module,
    files: Sequence[Path],
    settings: SampleConfig,
    folder: Path,
    step: int,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    vae=None,
) -> list[Path]:
    """Sample the first ``settings.num_clips`` cached clips; returns the latent files written."""
    was_training = transformer.training
    transformer.eval()
    written = []
    sampling = SamplingSettings(num_inference_steps=settings.num_inference_steps, guidance_scale=1.0,
                                flow_shift=settings.flow_shift, sampler=settings.sampler, seed=settings.seed)
    try:
        for path in list(files)[: settings.num_clips]:
            clip = read_cached_clip(path)
            latent = sample(transformer, conditioning_of(clip), sampling, dtype=dtype, device=device, progress=False)
            stem = folder / f"step-{step:08d}_{clip.name}"
            written.append(save_tensors(stem.with_suffix(".safetensors"), {"latent": latent.cpu()}))
            if vae is not None:
                decoded = decode_wide_latent(vae, latent, progress=False)
                write_video(stem.with_name(stem.name + "_rgb.mp4"), decoded.rgb, SAMPLE_FPS)
                write_video(stem.with_name(stem.name + "_xyz.mp4"), xyz_to_pixels(decoded.xyz).clamp(0, 1), SAMPLE_FPS)
    finally:
        transformer.train(was_training)
    logger.info("Wrote %d samples for step %d to %s.", len(written), step, folder)
    return written
