"""Streamed safetensors writing and the random-weight encoder writers, on small configs.

The full-size files (``make-tiny --full-size-encoders``) go through the same functions; these
tests never write them.
"""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, UMT5EncoderModel

from fourdnex_core.encoders import encode_image, encode_prompt
from fourdnex_core.loading.clip_vision_loader import load_clip_vision
from fourdnex_core.writing.encoders import (
    clip_vision_init_std,
    tiny_text_encoder_config,
    umt5_init_std,
    write_random_clip_vision,
    write_random_text_encoder,
)
from fourdnex_core.loading.safetensors_io import read_component_metadata, read_header, write_safetensors
from fourdnex_core.loading.text_encoder_loader import load_text_encoder
from fourdnex_core.loading.tokenizer import build_tiny_tokenizer, spiece_bytes


@pytest.fixture
def mixed_tensors():
    generator = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(5, 7, generator=generator),
        "b.bf16": torch.randn(3, 4, generator=generator).to(torch.bfloat16),
        "c.f16": torch.randn(6, generator=generator).to(torch.float16).t(),
        "fp8.weight": torch.randn(4, 8, generator=generator).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(0.25),
        "empty": torch.empty(0, dtype=torch.float8_e4m3fn),
        "bytes": torch.arange(11, dtype=torch.uint8),
        "not.contiguous": torch.randn(4, 6, generator=generator).t(),
    }


def _layout(tensors):
    return {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in tensors.items()}


def test_write_safetensors_reads_back_like_save_file(tmp_path, mixed_tensors):
    path = write_safetensors(tmp_path / "sub" / "x.safetensors", _layout(mixed_tensors),
                             iter(mixed_tensors.items()), metadata={"k": "v"})
    loaded = load_file(path)
    assert loaded.keys() == mixed_tensors.keys()
    for name, tensor in mixed_tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name
    with safe_open(path, framework="pt") as handle:
        assert handle.metadata() == {"k": "v"}
    header = read_header(path)
    assert min(entry.begin for entry in header.entries.values()) % 8 == 0
    assert header.metadata == {"k": "v"}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.safetensors"]  # no temporary file left


@pytest.mark.parametrize("problem", ["order", "shape", "missing", "extra"])
def test_write_safetensors_refuses_a_stream_that_does_not_fit(tmp_path, mixed_tensors, problem):
    items = list(mixed_tensors.items())
    layout = _layout(mixed_tensors)
    if problem == "order":
        items[0], items[1] = items[1], items[0]
    elif problem == "shape":
        items[0] = (items[0][0], torch.zeros(7, 5))
    elif problem == "missing":
        items = items[:-1]
    else:
        items.append(("more", torch.zeros(1)))
    path = tmp_path / "x.safetensors"
    with pytest.raises(ValueError):
        write_safetensors(path, layout, iter(items))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(folder)
    return folder


def test_random_text_encoder_loads_and_encodes(tmp_path, tokenizer_dir):
    config = tiny_text_encoder_config()
    path = write_random_text_encoder(config, tokenizer_dir, tmp_path / "umt5.safetensors", seed=3)
    header = read_header(path)
    component, stored = read_component_metadata(header)
    assert component == "text_encoder" and stored["d_model"] == config.d_model
    reference = UMT5EncoderModel(config).state_dict()
    reference.pop("encoder.embed_tokens.weight")
    assert header.shapes == {**{k: tuple(v.shape) for k, v in reference.items()},
                             "spiece_model": (len(spiece_bytes(tokenizer_dir)),)}
    assert all(entry.dtype == torch.float16 for name, entry in header.entries.items() if name != "spiece_model")

    model, tokenizer = load_text_encoder(path, dtype=torch.float32)
    embeds = encode_prompt(model, tokenizer, ["the camera moves POINTMAP_STYLE."], device="cpu", dtype=torch.float32)
    assert embeds.shape == (1, 512, config.d_model) and torch.isfinite(embeds).all()
    again = write_random_text_encoder(config, tokenizer_dir, tmp_path / "again.safetensors", seed=3)
    assert torch.equal(load_file(again)["shared.weight"], load_file(path)["shared.weight"])


def test_random_clip_vision_loads_and_encodes(tmp_path):
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              patch_size=14, image_size=224, projection_dim=16)
    path = write_random_clip_vision(config, tmp_path / "clip.safetensors")
    names = set(read_header(path).entries)
    assert "visual_projection.weight" in names and all(
        name.startswith(("vision_model.", "visual_projection.")) for name in names)
    model, processor = load_clip_vision(path, dtype=torch.float32)
    states = encode_image(model, processor, torch.rand(1, 64, 80, 3), device="cpu", dtype=torch.float32)
    assert states.shape == (1, 257, 32) and torch.isfinite(states).all()


def _std_ratios(file_tensors, reference, rule):
    """file std / transformers-init std for every tensor with an init rule."""
    ratios = {}
    for name, tensor in file_tensors.items():
        if tensor.is_floating_point() and rule(name) is not None:
            ratios[name] = tensor.float().std().item() / reference[name].float().std().item()
    return ratios


def test_init_stds_follow_transformers_init(tmp_path, tokenizer_dir):
    torch.manual_seed(0)
    config = tiny_text_encoder_config()
    file_tensors = load_file(write_random_text_encoder(config, tokenizer_dir, tmp_path / "t.safetensors"))
    ratios = _std_ratios(file_tensors, UMT5EncoderModel(config).state_dict(), lambda n: umt5_init_std(n, config))
    assert len(ratios) > 10 and all(0.75 < r < 1.33 for r in ratios.values()), ratios

    clip_config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                   patch_size=14, image_size=224, projection_dim=32)
    file_tensors = load_file(write_random_clip_vision(clip_config, tmp_path / "c.safetensors"))
    reference = {name if name.startswith(("vision_model.", "visual_projection.")) else "vision_model." + name: value
                 for name, value in CLIPVisionModelWithProjection(clip_config).state_dict().items()}
    ratios = _std_ratios(file_tensors, reference, lambda n: clip_vision_init_std(n, clip_config))
    assert len(ratios) > 10 and all(0.75 < r < 1.33 for r in ratios.values()), ratios


def test_norms_and_biases_are_not_trivial(tmp_path):
    """Norm scales near 1 and biases near 0 but not exactly, so comparisons exercise them."""
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    tensors = load_file(write_random_clip_vision(config, tmp_path / "c.safetensors"))
    norm = tensors["vision_model.pre_layrnorm.weight"].float()
    bias = tensors["vision_model.encoder.layers.0.mlp.fc1.bias"].float()
    assert 0.9 < norm.mean() < 1.1 and norm.std() > 0.01
    assert abs(bias.mean()) < 0.02 and bias.std() > 0.005
    assert json.loads(read_header(tmp_path / "c.safetensors").metadata["fourdnex_config"])["component"] == "clip_vision"
