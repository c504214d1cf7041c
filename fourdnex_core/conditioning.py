"""The image-to-video condition latent for a wide 6D video."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan

from .representation import condition_mask, condition_video
from .vae_io import encode_video


def encode_condition(
    vae: AutoencoderKLWan,
    image: torch.Tensor,
    xyz_init: torch.Tensor,
    num_frames: int,
    *,
    progress: bool = True,
) -> torch.Tensor:
    """VAE-encode the fused first frame plus zero frames and prepend the mask.

    Args:
        image: [3, H, W] RGB in [0, 1].
        xyz_init: [H, W, 3] or [3, H, W] XYZ guess for the first frame in scene units [-1, 1].
        num_frames: F (4k+1).
    Returns:
        [1, 20, f, H/8, 2W/8]: 4 mask channels (RGB half of the first frame 1, XYZ half 0.5),
        then 16 channels of Wan-normalized condition latent.
    """
    if xyz_init.ndim == 3 and xyz_init.shape[-1] == 3 and xyz_init.shape[0] != 3:
        xyz_init = xyz_init.permute(2, 0, 1)
    if xyz_init.shape != image.shape:
        raise ValueError(
            f"The XYZ init {tuple(xyz_init.shape)} must match the image {tuple(image.shape)} ([3, H, W])."
        )
    video = condition_video(image * 2.0 - 1.0, xyz_init, num_frames)
    latent = encode_video(vae, video, progress=progress)
    mask = condition_mask(num_frames, latent.shape[3], latent.shape[4], device=latent.device)
    return torch.cat([mask, latent], dim=1)
