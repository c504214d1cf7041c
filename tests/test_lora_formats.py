"""Every LoRA file format, read by us and fused, against diffusers' own loader + fuse_lora.

The helpers here (tiny model, random LoRA, writers of each format with hand-spelled key names)
are shared with ``test_lora_apply.py`` and ``test_lora_convert.py``.
"""

import json

import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
from safetensors.torch import load_file, save_file

from fourdnex_core.lora import LoraFormat, fuse_lora, read_lora
from tiny_configs import TINY_TRANSFORMER

RANK = 4
WIDTH = TINY_TRANSFORMER["num_attention_heads"] * TINY_TRANSFORMER["attention_head_dim"]  # the tiny inner_dim
# diffusers module path inside a block -> original Wan name (spelled here, independent of wan_keys).
IN_BLOCK_ORIGINAL = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}


def tiny_wan(seed: int = 0, cls: type[WanTransformer3DModel] = WanTransformer3DModel) -> WanTransformer3DModel:
    """The tiny Wan I2V transformer of tiny_configs (or a subclass) with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return cls(**TINY_TRANSFORMER).eval()


def random_lora(model, rank: int = RANK, seed: int = 1) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{diffusers module path: (down [r, in], up [out, r])} on every attention and FFN Linear."""
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for index in range(len(model.blocks)):
        for name in IN_BLOCK_ORIGINAL:
            linear = model.get_submodule(f"blocks.{index}.{name}")
            down = torch.randn(rank, linear.in_features, generator=generator) * 0.3
            up = torch.randn(linear.out_features, rank, generator=generator) * 0.3
            lora[f"blocks.{index}.{name}"] = (down, up)
    return lora


def original_name(module: str) -> str:
    """blocks.0.attn1.to_q -> blocks.0.self_attn.q"""
    _, index, rest = module.split(".", 2)
    return f"blocks.{index}.{IN_BLOCK_ORIGINAL[rest]}"


def write_release(directory, lora, embeddings=None):
    """The released layout: diffusers keys, no alpha; optional learnable_domain_embeddings.pt."""
    state_dict = {}
    for module, (down, up) in lora.items():
        state_dict[f"transformer.{module}.lora_A.weight"] = down
        state_dict[f"transformer.{module}.lora_B.weight"] = up
    path = directory / "pytorch_lora_weights.safetensors"
    save_file(state_dict, str(path), metadata={"format": "pt"})
    if embeddings is not None:
        torch.save(embeddings, directory / "learnable_domain_embeddings.pt")
    return path


def write_comfyui(path, lora, down_name="lora_A", up_name="lora_B", alpha=None, prefix="diffusion_model."):
    state_dict = {}
    for module, (down, up) in lora.items():
        base = prefix + original_name(module)
        state_dict[f"{base}.{down_name}.weight"] = down
        state_dict[f"{base}.{up_name}.weight"] = up
        if alpha is not None:
            state_dict[f"{base}.alpha"] = torch.tensor(alpha)
    save_file(state_dict, str(path))
    return path


def write_kohya(path, lora, alpha):
    state_dict = {}
    for module, (down, up) in lora.items():
        base = "lora_unet_" + original_name(module).replace(".", "_")
        state_dict[f"{base}.lora_down.weight"] = down
        state_dict[f"{base}.lora_up.weight"] = up
        state_dict[f"{base}.alpha"] = torch.tensor(alpha)
    save_file(state_dict, str(path))
    return path


def wan_inputs(width: int = 8) -> dict:
    """Forward inputs of the tiny I2V model: latent [1, 36, 2, 4, W], 512 text and 257 image tokens."""
    generator = torch.Generator().manual_seed(123)
    return dict(
        hidden_states=torch.randn(1, 36, 2, 4, width, generator=generator),
        timestep=torch.tensor([600.0]),
        encoder_hidden_states=torch.randn(1, 512, 32, generator=generator),
        encoder_hidden_states_image=torch.randn(1, 257, 24, generator=generator),
        return_dict=False,
    )


@torch.no_grad()
def run(model, width: int = 8) -> torch.Tensor:
    return model(**wan_inputs(width))[0]


def diffusers_fused(path, lora_scale: float, model=None):
    """The model after diffusers' own ``load_lora_weights`` + ``fuse_lora(lora_scale=...)``."""
    model = tiny_wan() if model is None else model
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None,
                                   image_processor=None, image_encoder=None, transformer=model)
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(components=["transformer"], lora_scale=lora_scale)
    return model


def ours_fused(path, strength: float = 1.0):
    model = tiny_wan()
    lora = read_lora(path, model)
    fuse_lora(model, lora.layers, strength)
    return model, lora


@pytest.fixture(scope="module")
def lora():
    return random_lora(tiny_wan())


@pytest.fixture(scope="module")
def base_output():
    return run(tiny_wan())


# (name, writer, our strength, diffusers lora_scale giving the same update, expected format)
FORMATS = [
    # The release: no alpha; our default strength 1.0 must equal diffusers' fuse at 0.5.
    ("release", lambda d, l: write_release(d, l), 1.0, 0.5, LoraFormat.DIFFUSERS),
    ("comfyui lora_A/B", lambda d, l: write_comfyui(d / "c.safetensors", l), 0.8, 0.8, LoraFormat.COMFYUI),
    ("comfyui down/up alpha", lambda d, l: write_comfyui(d / "c.safetensors", l, "lora_down", "lora_up", alpha=2.0),
     1.0, 1.0, LoraFormat.COMFYUI),
    ("kohya alpha", lambda d, l: write_kohya(d / "k.safetensors", l, alpha=8.0), 0.6, 0.6, LoraFormat.KOHYA),
]


@pytest.mark.parametrize("name, writer, strength, lora_scale, expected_format", FORMATS, ids=[f[0] for f in FORMATS])
def test_fused_forward_equals_diffusers(tmp_path, lora, base_output, name, writer, strength, lora_scale,
                                        expected_format):
    path = writer(tmp_path, lora)
    ours, parsed = ours_fused(path, strength)
    assert parsed.format is expected_format
    assert {layer.module for layer in parsed.layers} == set(lora)
    expected = run(diffusers_fused(path, lora_scale))
    actual = run(ours)
    assert not torch.allclose(actual, base_output, atol=1e-3), "the LoRA should change the output"
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_release_default_alpha_is_half_rank_and_overridable(tmp_path, lora):
    path = write_release(tmp_path, lora)
    assert {layer.alpha for layer in read_lora(path).layers} == {0.5 * RANK}
    assert {layer.alpha for layer in read_lora(path, alpha_over_rank_if_missing=1.0).layers} == {float(RANK)}


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", ""])
def test_comfyui_without_alpha_means_alpha_equals_rank(tmp_path, lora, prefix):
    path = write_comfyui(tmp_path / "c.safetensors", lora, prefix=prefix)
    parsed = read_lora(path)
    assert parsed.format is LoraFormat.COMFYUI
    assert {layer.alpha for layer in parsed.layers} == {float(RANK)}
    assert {layer.module for layer in parsed.layers} == set(lora)  # original names mapped without a model


def test_diffusers_metadata_alpha_equals_diffusers(tmp_path, lora):
    """A diffusers file with peft's lora_adapter_metadata: alpha (and an alpha_pattern) honoured as diffusers does."""
    state_dict = {}
    for module, (down, up) in lora.items():
        state_dict[f"transformer.{module}.lora_A.weight"] = down
        state_dict[f"transformer.{module}.lora_B.weight"] = up
    config = {"r": RANK, "lora_alpha": 2, "alpha_pattern": {"blocks.1.ffn.net.2": 12}, "rank_pattern": {},
              "target_modules": sorted(lora)}
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()})}
    path = tmp_path / "meta.safetensors"
    save_file(state_dict, str(path), metadata=metadata)
    ours, parsed = ours_fused(path)
    alphas = {layer.module: layer.alpha for layer in parsed.layers}
    assert alphas["blocks.1.ffn.net.2"] == 12 and alphas["blocks.0.attn1.to_q"] == 2
    torch.testing.assert_close(run(ours), run(diffusers_fused(path, 1.0)), rtol=1e-5, atol=1e-5)


def test_kohya_needs_the_model(tmp_path, lora):
    path = write_kohya(tmp_path / "k.safetensors", lora, alpha=4.0)
    with pytest.raises(ValueError, match="pass the model"):
        read_lora(path)


def test_lora_for_another_model_is_an_error_naming_it(tmp_path):
    flux = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, 24),
            "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(72, 4)}
    save_file(flux, str(tmp_path / "flux.safetensors"))
    with pytest.raises(ValueError, match=r"match no Linear.*double_blocks.*Flux"):
        read_lora(tmp_path / "flux.safetensors", tiny_wan())


def test_lora_for_a_deeper_wan_is_an_error(tmp_path, lora):
    deep = {module.replace("blocks.1.", "blocks.39."): factors for module, factors in lora.items()}
    path = write_comfyui(tmp_path / "deep.safetensors", deep)
    with pytest.raises(ValueError, match=r"block 39 but this transformer has 2 blocks"):
        read_lora(path, tiny_wan())


@pytest.mark.parametrize("extra, message", [
    ({"diffusion_model.blocks.0.self_attn.q.dora_scale": torch.ones(1, 24)}, "not plain LoRA factors"),
    ({"diffusion_model.blocks.0.self_attn.q.diff_b": torch.ones(24)}, "not plain LoRA factors"),
    ({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.ones(4, 24)}, "Two down tensors"),
], ids=["dora", "bias-diff", "duplicate"])
def test_unsupported_tensors_are_an_error(tmp_path, lora, extra, message):
    path = write_comfyui(tmp_path / "c.safetensors", lora)
    state_dict = load_file(str(path))
    state_dict.update(extra)
    save_file(state_dict, str(path))
    with pytest.raises(ValueError, match=message):
        read_lora(path, tiny_wan())


@pytest.mark.parametrize("state_dict, message", [
    ({"blocks.0.self_attn.q.weight": torch.zeros(24, 24)}, "not plain LoRA factors"),
    ({}, "holds no tensors"),
    ({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 24),
      "lora_unet_blocks_0_self_attn_q.lora_up.weight": torch.zeros(24, 4)}, "mixes key layouts"),
], ids=["full-checkpoint", "empty", "mixed"])
def test_files_that_are_no_known_lora_format_are_errors(tmp_path, state_dict, message):
    save_file(state_dict, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match=message):
        read_lora(tmp_path / "x.safetensors")


def test_missing_factor_and_pickle_files_are_errors(tmp_path, lora):
    path = write_release(tmp_path, {"blocks.0.attn1.to_q": lora["blocks.0.attn1.to_q"]})
    state_dict = load_file(str(path))
    del state_dict["transformer.blocks.0.attn1.to_q.lora_B.weight"]
    save_file(state_dict, str(path))
    with pytest.raises(ValueError, match="no up factor"):
        read_lora(path)
    torch.save({}, tmp_path / "lora.pt")
    with pytest.raises(ValueError, match=r"\.safetensors only"):
        read_lora(tmp_path / "lora.pt")
