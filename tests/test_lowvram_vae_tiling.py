"""VAE tiling through diffusers' tiled Wan VAE: settings, exactness when one tile covers all, call counts."""

import pytest
import torch
from diffusers import AutoencoderKLWan

from fourdnex_core.lowvram.vae_tiling import decoder_calls, enable_vae_tiling, vae_tiling
from tiny_configs import TINY_VAE

LATENT = (1, 16, 2, 6, 12)  # 5 frames of 48 x 96 pixels


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return AutoencoderKLWan(**TINY_VAE).eval()


@torch.no_grad()
def _decode(vae, latent):
    return vae.decode(latent, return_dict=False)[0]


def test_tiled_decode_covers_the_frame_and_counts_its_calls(vae):
    latent = torch.randn(LATENT, generator=torch.Generator().manual_seed(5))
    reference = _decode(vae, latent)
    calls = []
    handle = vae.decoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        with vae_tiling(vae, tile_size=48, overlap=16):
            tiled = _decode(vae, latent)
            expected_calls = decoder_calls(vae, *LATENT[2:])
    finally:
        handle.remove()
    assert tiled.shape == reference.shape
    assert len(calls) == expected_calls == 2 * 2 * 3  # 2 latent frames x (2 rows x 3 columns of tiles)
    difference = (tiled - reference).abs()
    assert difference.max() > 0  # tiles see less context than the whole frame: not exact ...
    assert difference.mean() < reference.abs().mean()  # ... but the same picture (measured: BENCHMARKS.md)
    assert not vae.use_tiling  # settings restored after the block


def test_one_tile_covering_the_frame_is_exact(vae):
    latent = torch.randn(LATENT, generator=torch.Generator().manual_seed(6))
    reference = _decode(vae, latent)
    with vae_tiling(vae, tile_size=96, overlap=32):
        assert torch.equal(_decode(vae, latent), reference)
        assert decoder_calls(vae, *LATENT[2:]) == LATENT[2]


def test_bad_tiles_and_non_vaes_are_refused(vae):
    with pytest.raises(ValueError, match="multiple of 8"):
        enable_vae_tiling(vae, tile_size=100)
    with pytest.raises(ValueError, match="overlap"):
        enable_vae_tiling(vae, tile_size=64, overlap=64)
    with pytest.raises(TypeError, match="AutoencoderKLWan"):
        enable_vae_tiling(torch.nn.Linear(2, 2))
    assert not vae.use_tiling
