"""Spatially tiled VAE encode/decode for wide 6D videos (49 x 480 x 1440 and up).

diffusers' ``AutoencoderKLWan`` tiles correctly for Wan's causal VAE: every spatial tile runs
the whole causal pass over time with its own feature cache, and neighbouring tiles overlap and
are blended linearly (vertical, then horizontal) across the overlap. This module sets it up with
sizes in pixels and checks them, and counts the decoder calls for progress bars. Memory then
scales with the tile instead of the frame; the output differs from the untiled one only near
tile seams (measured in ``BENCHMARKS.md``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_TILE = 256
DEFAULT_OVERLAP = 64


def _check_vae(vae: nn.Module) -> int:
    if not hasattr(vae, "enable_tiling") or not hasattr(vae, "spatial_compression_ratio"):
        raise TypeError(f"{type(vae).__name__} is not a diffusers Wan VAE (AutoencoderKLWan); it cannot be tiled here.")
    return int(vae.spatial_compression_ratio)


def check_tile(tile_size: int, overlap: int, ratio: int = 8) -> None:
    """Tile and stride must be whole latent pixels (multiples of ``ratio``) and overlap < tile."""
    if tile_size <= 0 or tile_size % ratio:
        raise ValueError(f"tile_size must be a positive multiple of {ratio} pixels, got {tile_size}.")
    if not 0 <= overlap < tile_size or overlap % ratio:
        raise ValueError(f"overlap must be a multiple of {ratio} in 0..{tile_size - ratio}, got {overlap}; "
                         "try 64 for 256-pixel tiles.")


def enable_vae_tiling(vae: nn.Module, *, tile_size: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> None:
    """Tile ``vae``'s encode and decode: square tiles of ``tile_size`` pixels overlapping by ``overlap``."""
    ratio = _check_vae(vae)
    check_tile(tile_size, overlap, ratio)
    stride = tile_size - overlap
    vae.enable_tiling(tile_sample_min_height=tile_size, tile_sample_min_width=tile_size,
                      tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    logger.info("VAE tiling on: %d px tiles, %d px overlap.", tile_size, overlap)


@contextlib.contextmanager
def vae_tiling(vae: nn.Module, *, tile_size: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> Iterator[None]:
    """Tiling for the duration of a ``with`` block; the VAE's previous settings come back after."""
    _check_vae(vae)
    names = ("use_tiling", "tile_sample_min_height", "tile_sample_min_width",
             "tile_sample_stride_height", "tile_sample_stride_width")
    saved = {name: getattr(vae, name) for name in names}
    enable_vae_tiling(vae, tile_size=tile_size, overlap=overlap)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)


def decoder_calls(vae: nn.Module, latent_frames: int, latent_height: int, latent_width: int) -> int:
    """How many times ``vae.decoder`` runs to decode a latent of this size (for progress totals)."""
    ratio = _check_vae(vae)
    tile = vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio
    if not vae.use_tiling or (latent_height <= tile[0] and latent_width <= tile[1]):
        return latent_frames
    rows = math.ceil(latent_height / (vae.tile_sample_stride_height // ratio))
    cols = math.ceil(latent_width / (vae.tile_sample_stride_width // ratio))
    return rows * cols * latent_frames
