"""From the sampled wide latent to RGB frames and XYZ point maps."""

from __future__ import annotations

import dataclasses

import torch
from diffusers import AutoencoderKLWan

from .representation import denormalize_xyz_latent, pixels_to_xyz, split_width
from .vae_io import decode_latent


@dataclasses.dataclass
class DecodedVideo:
    """rgb: [F, H, W, 3] in [0, 1]; xyz: [F, H, W, 3] point maps in scene units [-1, 1]."""

    rgb: torch.Tensor
    xyz: torch.Tensor


def decode_wide_latent(vae: AutoencoderKLWan, wide_latent: torch.Tensor, *, progress: bool = True) -> DecodedVideo:
    """Split-aware decode: de-normalize the XYZ half, VAE-decode, split into RGB and XYZ.

    Args:
        wide_latent: [1, 16, f, h, 2w] as returned by :func:`fourdnex_core.sampler.sample`.
    """
    if wide_latent.ndim != 5 or wide_latent.shape[0] != 1:
        raise ValueError(f"Expected one wide latent [1, 16, f, h, 2w], got {tuple(wide_latent.shape)}.")
    video = decode_latent(vae, denormalize_xyz_latent(wide_latent.float()), progress=progress)  # [1, 3, F, H, 2W]
    return split_decoded_frames(((video[0] + 1.0) / 2.0).permute(1, 2, 3, 0))


def split_decoded_frames(frames: torch.Tensor) -> DecodedVideo:
    """Decoded wide frames [F, H, 2W, 3] in [0, 1] (clamped here) -> RGB frames and XYZ point maps."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"Decoded frames must be [F, H, 2W, 3], got {tuple(frames.shape)}.")
    rgb, xyz_pixels = split_width(frames.float().clamp(0.0, 1.0), width_dim=2)
    return DecodedVideo(rgb=rgb.contiguous(), xyz=pixels_to_xyz(xyz_pixels).contiguous())
