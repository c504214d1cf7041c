"""Wan2.1 VAE: key mapping both ways, single-file and diffusers-folder loading, detection."""

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import load_file, save_file
from test_safetensors_io import write_sparse_safetensors
from tiny_configs import TINY_TRANSFORMER, TINY_VAE

from fourdnex_core.loading.detect import VAE_CONFIG_FILE, UnsupportedModelError, inspect_vae, packaged_config
from fourdnex_core.loading.locate import ModelSource
from fourdnex_core.loading.safetensors_io import read_component_metadata, read_header
from fourdnex_core.writing.single_files import save_transformer_single_file, save_vae_single_file
from fourdnex_core.loading.vae_loader import load_vae
from fourdnex_core.loading.wan_vae_keys import (
    vae_diffusers_to_original,
    vae_original_to_diffusers,
    vae_state_dict_to_diffusers,
    vae_state_dict_to_original,
)


def _empty_vae(**config):
    with init_empty_weights():
        return AutoencoderKLWan(**config)


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**TINY_VAE).eval()
    with torch.no_grad():  # RMS-norm gammas start at one; make them differ so a wrong mapping shows
        for name, parameter in vae.named_parameters():
            if name.endswith("gamma"):
                parameter.uniform_(0.5, 1.5)
    return vae


@pytest.fixture(scope="module")
def video():
    return torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_mapping_round_trips_and_agrees_with_diffusers_converter():
    real = _empty_vae()  # the Wan2.1 VAE, 2 residual blocks per level
    names = list(real.state_dict())
    original = vae_state_dict_to_original(dict.fromkeys(names))
    assert list(vae_state_dict_to_diffusers(original)) == names
    assert set(convert_wan_vae_to_diffusers(dict.fromkeys(original))) == set(names)
    known_names = {
        "conv1.weight",
        "encoder.conv1.weight",
        "encoder.middle.1.to_qkv.weight",
        "decoder.middle.0.residual.0.gamma",
        "decoder.upsamples.3.resample.1.weight",
        "decoder.upsamples.3.time_conv.weight",
        "decoder.upsamples.4.shortcut.weight",
        "decoder.head.2.bias",
    }
    assert known_names <= set(original)


def test_mapping_follows_num_res_blocks():
    tiny = _empty_vae(**TINY_VAE)
    blocks = TINY_VAE["num_res_blocks"]
    for name in tiny.state_dict():
        original = vae_diffusers_to_original(name, blocks)
        assert original is not None and vae_original_to_diffusers(original, blocks) == name
    # one residual block per level: the decoder groups are [res, res, resample], three wide
    assert vae_diffusers_to_original("decoder.up_blocks.1.upsamplers.0.resample.1.weight", blocks) == (
        "decoder.upsamples.5.resample.1.weight"
    )


def test_unknown_names_are_refused():
    assert vae_original_to_diffusers("encoder.downsamples.0.residual.5.weight") is None
    assert vae_original_to_diffusers("model.diffusion_model.blocks.0.self_attn.q.weight") is None
    assert vae_diffusers_to_original("decoder.up_blocks.0.resnets.3.conv1.weight") is None
    with pytest.raises(ValueError, match="Not original Wan2.1 VAE parameter names: first_stage_model.x"):
        vae_state_dict_to_diffusers({"first_stage_model.x": 0})


def test_shipped_config_is_diffusers_default():
    shipped = packaged_config(VAE_CONFIG_FILE)
    defaults = {k: v for k, v in _empty_vae().config.items() if not k.startswith("_")}
    assert {k: v for k, v in shipped.items() if not k.startswith("_")} == defaults


def test_single_file_round_trip(tiny_vae, video, tmp_path):
    path = save_vae_single_file(tiny_vae, tmp_path / "wan_2.1_vae.safetensors")
    header = read_header(path)
    assert "decoder.middle.0.residual.0.gamma" in header.entries
    assert read_component_metadata(header)[0] == "vae"
    loaded = load_vae(path)
    expected = tiny_vae.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())
    with torch.no_grad():
        latents = tiny_vae.encode(video).latent_dist.mode()
        assert torch.equal(loaded.encode(video).latent_dist.mode(), latents)
        assert torch.equal(loaded.decode(latents).sample, tiny_vae.decode(latents).sample)


def test_diffusers_folder_and_bf16(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "model" / "vae")
    loaded = load_vae(tmp_path / "model", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    expected = tiny_vae.state_dict()
    assert all(torch.equal(t, expected[n].to(torch.bfloat16)) for n, t in loaded.state_dict().items())


def test_real_wan21_vae_shapes_give_the_shipped_config(tmp_path):
    shapes = {k: tuple(v.shape) for k, v in vae_state_dict_to_original(_empty_vae().state_dict()).items()}
    path = write_sparse_safetensors(tmp_path / "wan_2.1_vae.safetensors", shapes)
    checkpoint = inspect_vae(ModelSource("vae", "single_file", path))
    assert checkpoint.key_style == "original"
    assert checkpoint.config == packaged_config(VAE_CONFIG_FILE)


def test_wan22_vae_is_named_and_refused(tmp_path):
    shapes = {"encoder.conv1.weight": (160, 12, 3, 3, 3), "conv2.weight": (48, 48, 1, 1, 1)}
    path = write_sparse_safetensors(tmp_path / "wan2.2_vae.safetensors", shapes)
    with pytest.raises(UnsupportedModelError, match=r"holds the Wan2.2 VAE; 4DNeX needs the Wan2.1 VAE.*wan_2.1_vae"):
        load_vae(path)


def test_other_components_and_unknown_layouts_are_refused(tmp_path):
    transformer = save_transformer_single_file(WanTransformer3DModel(**TINY_TRANSFORMER), tmp_path / "t.safetensors")
    with pytest.raises(UnsupportedModelError, match="holds a transformer, not a vae"):
        load_vae(transformer)
    plain = tmp_path / "plain_transformer.safetensors"
    save_file(load_file(transformer), plain)  # same tensors, no metadata: recognised from names
    with pytest.raises(UnsupportedModelError, match="holds a Wan transformer, not a Wan VAE"):
        load_vae(plain)
    shapes = {"encoder.conv1.weight": (32, 3, 3, 3, 3), "conv2.weight": (16, 16, 1, 1, 1)}
    odd = write_sparse_safetensors(tmp_path / "odd_vae.safetensors", shapes)
    with pytest.raises(UnsupportedModelError, match=r"unknown VAE layout.*'base_dim': 32"):
        load_vae(odd)


def test_missing_tensor_is_listed(tiny_vae, tmp_path):
    path = save_vae_single_file(tiny_vae, tmp_path / "vae.safetensors")
    tensors = load_file(path)
    del tensors["decoder.head.2.bias"]
    save_file(tensors, path, metadata=read_header(path).metadata)
    with pytest.raises(ValueError, match=r"1 missing tensors \(decoder.conv_out.bias\)"):
        load_vae(path)
