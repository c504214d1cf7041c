"""The library side of the native-ComfyUI path: LoRA in ComfyUI's names, shared positions, domain
embeddings, and the condition, mask and latent in ComfyUI's conventions.

ComfyUI itself is not installed here; ``scripts/native_equivalence.py`` checks the glue in a real
ComfyUI against the pack's transformer.
"""

import pytest
import torch
from diffusers import AutoencoderKLWan

from fourdnex_core.lora import LoraFormat, parse_lora_state_dict, to_comfyui_state_dict
from fourdnex_core.model_set import read_4dnex_lora
from fourdnex_core.representation import (
    condition_frames,
    condition_mask,
    condition_video,
    denormalize_xyz_latent,
    denormalize_xyz_raw_latent,
    generation_mask,
    xyz_init_map,
)
from fourdnex_core.transformer import FourDNeXTransformer3DModel, add_domain_embeddings, share_positions
from fourdnex_core.vae_io import wan_latent_stats
from test_lora_formats import WIDTH, random_lora, tiny_wan, write_release


@pytest.fixture(scope="module")
def release_layers(tmp_path_factory):
    directory = tmp_path_factory.mktemp("release")
    embeddings = torch.randn(2, WIDTH, generator=torch.Generator().manual_seed(3))
    path = write_release(directory, random_lora(tiny_wan()), embeddings)
    layers, read_embeddings = read_4dnex_lora(path)
    assert torch.equal(read_embeddings, embeddings)  # picked up beside the LoRA, as released
    return layers


def test_comfyui_lora_names_are_the_native_wan_modules(release_layers):
    state_dict = to_comfyui_state_dict(release_layers)
    modules = {key.removesuffix(".lora_down.weight") for key in state_dict if key.endswith(".lora_down.weight")}
    assert "diffusion_model.blocks.0.self_attn.q" in modules and "diffusion_model.blocks.1.cross_attn.o" in modules
    assert not any("attn1" in key or "to_q" in key or "to_out" in key for key in state_dict)
    assert len(state_dict) == 3 * len(release_layers)
    layer = release_layers[0]
    assert layer.alpha == 0.5 * layer.rank  # the release's alpha, stored so ComfyUI's strength 1.0 means the same


def test_comfyui_lora_round_trip(release_layers):
    parsed = parse_lora_state_dict(to_comfyui_state_dict(release_layers))
    assert parsed.format is LoraFormat.COMFYUI
    by_module = {layer.module: layer for layer in parsed.layers}
    assert set(by_module) == {layer.module for layer in release_layers}
    for layer in release_layers:
        read = by_module[layer.module]
        assert read.alpha == layer.alpha
        assert torch.equal(read.down, layer.down) and torch.equal(read.up, layer.up)


def test_comfyui_lora_refuses_modules_without_a_native_name(release_layers):
    odd = release_layers[0].__class__("blocks.0.attn1.not_a_layer", release_layers[0].down, release_layers[0].up, 1.0)
    with pytest.raises(ValueError, match="no name in the original Wan layout"):
        to_comfyui_state_dict([odd])
    with pytest.raises(ValueError, match="No LoRA layers"):
        to_comfyui_state_dict([])


@pytest.mark.parametrize("rest", [(1, 12), (1, 3, 2, 2)], ids=["diffusers", "comfyui"])
def test_share_positions_gives_xyz_tokens_the_rgb_positions(rest):
    frames, rows, half_cols = 2, 3, 4
    table = torch.randn(1, frames * rows * half_cols, *rest)
    shared = share_positions(table, frames, rows, half_cols)
    wide = shared.reshape(frames, rows, 2 * half_cols, -1)
    half = table.reshape(frames, rows, half_cols, -1)
    assert torch.equal(wide[:, :, :half_cols], half) and torch.equal(wide[:, :, half_cols:], half)
    with pytest.raises(ValueError, match="tokens"):
        share_positions(table, frames, rows, half_cols + 1)


def test_share_positions_is_what_the_pack_transformer_uses():
    model = FourDNeXTransformer3DModel(num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
                                       text_dim=32, freq_dim=16, ffn_dim=32, num_layers=1)
    latent = torch.zeros(1, 36, 2, 6, 16)  # half width 8 -> 4 patch columns per half
    cos, _ = model.rope(latent)
    half_cos, _ = super(type(model.rope), model.rope).forward(latent[..., :8])
    assert torch.equal(cos, share_positions(half_cos, 2, 3, 4))


def test_add_domain_embeddings_marks_each_half():
    patches = torch.zeros(1, 5, 2, 3, 8)
    embeddings = torch.stack([torch.full((5,), 1.0), torch.full((5,), -2.0)])
    out = add_domain_embeddings(patches, embeddings)
    assert torch.all(out[..., :4] == 1.0) and torch.all(out[..., 4:] == -2.0)
    with pytest.raises(ValueError, match="even number"):
        add_domain_embeddings(torch.zeros(1, 5, 2, 3, 7), embeddings)
    with pytest.raises(ValueError, match="width 6"):
        add_domain_embeddings(torch.zeros(1, 6, 2, 3, 8), embeddings)


def test_condition_frames_are_the_condition_video_as_comfyui_frames():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(32, 48, 3, generator=generator)
    xyz = xyz_init_map(32, 48)
    frames = condition_frames(image, xyz, 9)
    assert frames.shape == (9, 32, 96, 3)
    assert torch.allclose(frames[0, :, :48], image, atol=1e-6)
    assert torch.allclose(frames[0, :, 48:], (xyz + 1) / 2, atol=1e-6)
    assert torch.all(frames[1:] == 0.5)  # the zero frames of the [-1, 1] video
    video = condition_video(image.permute(2, 0, 1) * 2 - 1, xyz.permute(2, 0, 1), 9)
    assert torch.allclose(frames * 2 - 1, video[0].permute(1, 2, 3, 0), atol=1e-6)
    with pytest.raises(ValueError, match="must match the image"):
        condition_frames(image, xyz_init_map(32, 32), 9)
    with pytest.raises(ValueError, match="4k\\+1"):
        condition_frames(image, xyz, 8)


def test_generation_mask_flips_the_condition_mask():
    mask = generation_mask(9, 4, 12)
    assert mask.shape == (1, 4, 3, 4, 12)
    assert torch.all(mask[:, :, 0, :, :6] == 0.0) and torch.all(mask[:, :, 0, :, 6:] == 0.5)
    assert torch.all(mask[:, :, 1:] == 1.0)
    assert torch.equal(mask, 1 - condition_mask(9, 4, 12))


def test_wan_latent_stats_are_the_vae_configs():
    mean, std = wan_latent_stats()
    config = AutoencoderKLWan().config  # diffusers' default config is Wan2.1's VAE
    assert mean.tolist() == pytest.approx(config.latents_mean) and std.tolist() == pytest.approx(config.latents_std)


def test_raw_latent_denormalization_matches_the_normalized_one():
    mean, std = wan_latent_stats()
    normalized = torch.randn(1, 16, 3, 4, 10, generator=torch.Generator().manual_seed(1))
    raw = normalized * std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1)
    out = denormalize_xyz_raw_latent(raw, mean, std)
    expected = denormalize_xyz_latent(normalized) * std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(out[..., :5], raw[..., :5], atol=1e-5)  # the RGB half is unchanged
    assert not torch.allclose(out[..., 5:], raw[..., 5:], atol=1e-2)
