"""Wan transformer loading: diffusers folders, ComfyUI single files (bf16/fp16/fp8/fp8 scaled), detection.

Tiny random-weight models are saved in the real formats and loaded back; the real 14B layouts
are checked through sparse files (real headers, no weights on disk).
"""

import logging

import pytest
import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import load_file, save_file
from test_safetensors_io import write_sparse_safetensors
from tiny_configs import TINY_TRANSFORMER, TINY_VAE

from fourdnex_core.loading.detect import (
    I2V_14B,
    TRANSFORMER_CONFIG_FILE,
    UnsupportedModelError,
    inspect_transformer,
    packaged_config,
)
from fourdnex_core.loading.fp8 import FP8Linear, dequantize_fp8, is_fp8_dtype, quantize_fp8, quantized_linear_from
from fourdnex_core.loading.locate import ModelSource
from fourdnex_core.loading.safetensors_io import read_header
from fourdnex_core.writing.single_files import save_transformer_single_file, save_vae_single_file
from fourdnex_core.loading.transformer_loader import load_transformer
from fourdnex_core.loading.wan_keys import diffusers_to_original
from fourdnex_core.transformer import FourDNeXTransformer3DModel

BLOCK_LINEARS = 12  # per block: 4 self-attention, 6 cross-attention (incl. k_img, v_img), 2 FFN


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = WanTransformer3DModel(**TINY_TRANSFORMER).eval()
    with torch.no_grad():  # norms start at ones/zeros; make every tensor distinct so a mix-up shows
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.uniform_(-0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(1, 36, 3, 8, 8, generator=generator),
        torch.tensor([500]),
        torch.randn(1, 7, TINY_TRANSFORMER["text_dim"], generator=generator),
        torch.randn(1, 5, TINY_TRANSFORMER["image_dim"], generator=generator),
    )


def _run(model, inputs, dtype=torch.float32):
    latents, timestep, text, image = inputs
    with torch.no_grad():
        return model(latents.to(dtype), timestep, text.to(dtype), image.to(dtype)).sample.float()


def _assert_same_weights(loaded, reference, dtype=torch.float32):
    expected = reference.state_dict()
    state = loaded.state_dict()
    assert set(state) == set(expected)
    for name, tensor in state.items():
        assert torch.equal(tensor.float(), expected[name].to(dtype).float()), name


def _real_shapes(config, *, prefix="model.diffusion_model."):
    """{original name: shape} of a real-size Wan model built without memory."""
    with init_empty_weights():
        model = WanTransformer3DModel(**config)
    return {prefix + diffusers_to_original(k): tuple(v.shape) for k, v in model.state_dict().items()}


def test_diffusers_folder_plain_and_sharded(tiny, inputs, tmp_path):
    tiny.save_pretrained(tmp_path / "plain" / "transformer")
    tiny.save_pretrained(tmp_path / "sharded" / "transformer", max_shard_size="40KB")
    assert len(list((tmp_path / "sharded" / "transformer").glob("*.safetensors"))) > 1
    for root in ("plain", "sharded"):
        loaded = load_transformer(tmp_path / root, dtype=torch.float32)
        _assert_same_weights(loaded, tiny)
        assert torch.equal(_run(loaded, inputs), _run(tiny, inputs))


def test_bf16_dtypes_match_diffusers_from_pretrained(tiny, tmp_path):
    folder = tmp_path / "transformer"
    tiny.save_pretrained(folder)
    ours = load_transformer(folder, dtype=torch.bfloat16).state_dict()
    theirs = WanTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16).state_dict()
    assert {n: t.dtype for n, t in ours.items()} == {n: t.dtype for n, t in theirs.items()}
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)
    assert ours["blocks.0.scale_shift_table"].dtype == torch.float32
    assert ours["blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("prefix", [True, False])
def test_comfy_single_file_bf16(tiny, inputs, tmp_path, prefix):
    path = save_transformer_single_file(tiny, tmp_path / "wan2.1_i2v_480p_14B_bf16.safetensors", prefix=prefix)
    names = read_header(path).entries
    assert ("model.diffusion_model.head.modulation" in names) == prefix
    assert ("blocks.0.self_attn.q.weight" in names) != prefix
    loaded = load_transformer(path, dtype=torch.float32)
    _assert_same_weights(loaded, tiny, torch.bfloat16)
    torch.testing.assert_close(_run(loaded, inputs), _run(tiny, inputs), atol=0.1, rtol=0.05)


def test_fp16_file_loads_in_fp16_with_fp32_norms(tiny, tmp_path):
    path = save_transformer_single_file(tiny, tmp_path / "t.safetensors", torch.float16)
    loaded = load_transformer(path, dtype=torch.float16)
    dtypes = {name: p.dtype for name, p in loaded.named_parameters()}
    assert dtypes["blocks.1.ffn.net.2.weight"] == torch.float16
    assert dtypes["blocks.1.norm2.weight"] == torch.float32
    assert dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    _assert_same_weights(loaded, tiny, torch.float16)


@pytest.mark.parametrize("fp8", ["e4m3fn", "scaled"])
def test_fp8_files_keep_block_linears_in_fp8(tiny, inputs, tmp_path, fp8):
    path = save_transformer_single_file(tiny, tmp_path / f"t_{fp8}.safetensors", fp8=fp8)
    file = load_file(path)
    assert file["model.diffusion_model.blocks.0.ffn.0.weight"].dtype == torch.float8_e4m3fn
    assert file["model.diffusion_model.head.head.weight"].dtype == torch.bfloat16
    assert ("model.diffusion_model.scaled_fp8" in file) == (fp8 == "scaled")

    loaded = load_transformer(path, dtype=torch.float32)
    fp8_layers = {n: m for n, m in loaded.named_modules() if isinstance(m, FP8Linear)}
    assert len(fp8_layers) == BLOCK_LINEARS * TINY_TRANSFORMER["num_layers"]
    assert all(n.startswith("blocks.") and is_fp8_dtype(m.weight.dtype) for n, m in fp8_layers.items())
    layer = loaded.blocks[0].ffn.net[0].proj
    scale = file.get("model.diffusion_model.blocks.0.ffn.0.scale_weight")
    expected = dequantize_fp8(file["model.diffusion_model.blocks.0.ffn.0.weight"], scale, torch.float32)
    assert torch.equal(layer.dequantized_weight(), expected)
    original = tiny.blocks[0].ffn.net[0].proj.weight
    assert (expected - original).abs().max() <= original.abs().max() / 8

    upcast = load_transformer(path, dtype=torch.float32, keep_fp8=False)
    assert not any(isinstance(m, FP8Linear) for m in upcast.modules())
    assert torch.equal(upcast.blocks[0].ffn.net[0].proj.weight, expected)
    assert torch.equal(_run(loaded, inputs), _run(upcast, inputs))
    torch.testing.assert_close(_run(loaded, inputs), _run(tiny, inputs), atol=0.3, rtol=0.1)

    resaved = save_transformer_single_file(loaded, tmp_path / "resaved.safetensors", torch.float32)
    assert torch.equal(load_transformer(resaved, dtype=torch.float32).blocks[0].ffn.net[0].proj.weight, expected)


def test_fp8_scaled_in_bf16_and_scale_input_ignored(tiny, inputs, tmp_path):
    path = save_transformer_single_file(tiny, tmp_path / "t.safetensors", fp8="scaled")
    metadata = read_header(path).metadata
    tensors = load_file(path)
    tensors["model.diffusion_model.blocks.0.self_attn.q.scale_input"] = torch.tensor(1.0)
    save_file(tensors, path, metadata=metadata)
    loaded = load_transformer(path, dtype=torch.bfloat16)
    assert loaded.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert loaded.blocks[0].attn1.to_q.compute_dtype == torch.bfloat16
    assert loaded.blocks[0].attn1.to_q.scale_weight.dtype == torch.float32
    assert _run(loaded, inputs, torch.bfloat16).isfinite().all()


def test_fourdnex_model_gets_zero_domain_embeddings_and_round_trips_them(tiny, tmp_path):
    path = save_transformer_single_file(tiny, tmp_path / "wan.safetensors")
    model = load_transformer(path, model_cls=FourDNeXTransformer3DModel, dtype=torch.bfloat16)
    assert isinstance(model, FourDNeXTransformer3DModel)
    assert model.domain_embeddings.shape == (2, 24) and not model.domain_embeddings.is_meta
    assert not model.domain_embeddings.any()
    _assert_same_weights(model.blocks[0], tiny.blocks[0], torch.bfloat16)

    with torch.no_grad():
        model.domain_embeddings.copy_(torch.arange(48.0).reshape(2, 24))
    again = load_transformer(
        save_transformer_single_file(model, tmp_path / "fourdnex.safetensors"), model_cls=FourDNeXTransformer3DModel
    )
    assert torch.equal(again.domain_embeddings.float(), torch.arange(48.0).reshape(2, 24))


def test_missing_unexpected_and_misshapen_tensors_are_listed(tiny, tmp_path):
    path = save_transformer_single_file(tiny, tmp_path / "t.safetensors")
    metadata = read_header(path).metadata
    tensors = load_file(path)
    del tensors["model.diffusion_model.blocks.1.ffn.2.weight"]
    tensors["model.diffusion_model.extra.weight"] = torch.zeros(1)
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(ValueError) as error:
        load_transformer(path)
    assert "1 missing tensors (blocks.1.ffn.net.2.weight)" in str(error.value)
    assert "1 unexpected tensors (extra.weight)" in str(error.value)

    tensors = load_file(save_transformer_single_file(tiny, path))
    tensors["model.diffusion_model.head.head.weight"] = torch.zeros(3, 24)
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(ValueError, match=r"shapes differ: proj_out.weight: file \(3, 24\), model \(64, 24\)"):
        load_transformer(path)

    tensors = load_file(save_transformer_single_file(tiny, path))
    tensors["head.modulation"] = tensors["model.diffusion_model.head.modulation"].clone()
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(ValueError, match="are both 'scale_shift_table'; the file mixes two copies"):
        load_transformer(path)


def test_real_i2v_14b_shapes_give_the_shipped_config(tmp_path, caplog):
    shipped = packaged_config(TRANSFORMER_CONFIG_FILE)
    shapes = _real_shapes({k: v for k, v in shipped.items() if not k.startswith("_")})
    path = write_sparse_safetensors(tmp_path / "wan2.1_i2v_480p_14B_bf16.safetensors", shapes)
    checkpoint = inspect_transformer(ModelSource("transformer", "single_file", path))
    assert checkpoint.config == shipped and checkpoint.variant == I2V_14B
    assert (checkpoint.key_style, checkpoint.fp8) == ("original", "none")
    assert sum(e.nbytes for e in read_header(path).entries.values()) > 32e9  # 16.4B parameters

    renamed = path.rename(tmp_path / "wan2.1_i2v_720p_14B_bf16.safetensors")
    with caplog.at_level(logging.WARNING):
        inspect_transformer(ModelSource("transformer", "single_file", renamed))
    assert "720P" in caplog.text


I2V_DIFFS = {
    "Wan2.1 T2V 1.3B": dict(num_attention_heads=12, ffn_dim=8960, num_layers=30, in_channels=16, image_dim=None),
    "Wan2.2 I2V A14B": dict(image_dim=None, added_kv_proj_dim=None),
    "Wan2.1 FLF2V 14B": dict(pos_embed_seq_len=514),
}


@pytest.mark.parametrize("variant", list(I2V_DIFFS))
def test_other_wan_releases_are_named(tmp_path, variant):
    config = {k: v for k, v in packaged_config(TRANSFORMER_CONFIG_FILE).items() if not k.startswith("_")}
    config.update(I2V_DIFFS[variant])
    if config["image_dim"] is None:
        config["added_kv_proj_dim"] = None
    path = write_sparse_safetensors(tmp_path / "model.safetensors", _real_shapes(config))
    with pytest.raises(UnsupportedModelError) as error:
        load_transformer(path)
    message = str(error.value)
    assert f"holds the {variant} transformer; 4DNeX needs the Wan2.1 I2V 14B 480P model" in message
    assert "wan2.1_i2v_480p_14B_fp8_scaled.safetensors" in message and "Diffusers" in message


def test_a_t2v_diffusers_folder_is_refused_despite_its_config(tmp_path):
    config = dict(num_attention_heads=12, ffn_dim=8960, num_layers=30, in_channels=16, text_dim=4096, freq_dim=256)
    with init_empty_weights():
        model = WanTransformer3DModel(**config)
    folder = tmp_path / "Wan2.1-T2V-1.3B-Diffusers" / "transformer"
    folder.mkdir(parents=True)
    model.save_config(folder)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    write_sparse_safetensors(folder / "diffusion_pytorch_model.safetensors", shapes, dtype=torch.float32)
    with pytest.raises(UnsupportedModelError, match="holds the Wan2.1 T2V 1.3B transformer"):
        load_transformer(folder.parent)


def test_unknown_layouts_and_other_components_are_refused(tiny, tmp_path):
    plain = tmp_path / "tiny_without_metadata.safetensors"
    save_file(load_file(save_transformer_single_file(tiny, tmp_path / "t.safetensors")), plain)
    with pytest.raises(UnsupportedModelError, match=r"tiny_without_metadata.*unknown transformer layout \(width 24"):
        load_transformer(plain)

    vae = save_vae_single_file(AutoencoderKLWan(**TINY_VAE), tmp_path / "wan_2.1_vae.safetensors")
    with pytest.raises(UnsupportedModelError, match="holds a vae, not a transformer"):
        load_transformer(vae)
    plain_vae = tmp_path / "plain_vae.safetensors"
    save_file(load_file(vae), plain_vae)
    with pytest.raises(UnsupportedModelError, match=r"holds a VAE, not a Wan transformer.*wan2.1_i2v_480p_14B_bf16"):
        load_transformer(plain_vae)
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_transformer(plain, dtype=torch.float64)


def test_fp8_module_public_api():
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(6, 5, generator=generator) * 3
    x = torch.randn(4, 5, generator=generator)
    linear = torch.nn.Linear(5, 6)
    for scaled in (True, False):
        weight_fp8, scale = quantize_fp8(weight, scaled=scaled)
        assert (scale is not None) == scaled and weight_fp8.dtype == torch.float8_e4m3fn
        layer = quantized_linear_from(linear, weight_fp8, scale, torch.float32)
        dequantized = dequantize_fp8(weight_fp8, scale, torch.float32)
        assert torch.equal(layer(x), F.linear(x, dequantized, linear.bias.detach()))
        assert (dequantized - weight).abs().max() <= weight.abs().max() / 8
    assert is_fp8_dtype(torch.float8_e5m2) and not is_fp8_dtype(torch.bfloat16)
    with pytest.raises(ValueError, match=r"weight_fp8 has shape \(5, 6\); the layer needs \(6, 5\)"):
        quantized_linear_from(linear, weight_fp8.T.contiguous(), None, torch.float32)
    with pytest.raises(ValueError, match="fp8 dtype"):
        quantized_linear_from(linear, weight, None, torch.float32)
