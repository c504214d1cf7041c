"""The single-file 4DNeX LoRA (converter, CLI) and the domain embeddings file."""

import pytest
import torch
from safetensors import safe_open
from torch import nn

from fourdnex_core.cli import main
from fourdnex_core.lora import (
    LoraFormat,
    LoraLayer,
    convert_release_lora,
    fuse_lora,
    load_domain_embeddings,
    parse_lora_state_dict,
    read_lora,
    set_domain_embeddings,
    to_fourdnex_state_dict,
)
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from test_lora_formats import RANK, WIDTH, diffusers_fused, random_lora, run, tiny_wan, write_release


@pytest.fixture(scope="module")
def lora():
    return random_lora(tiny_wan())


@pytest.fixture
def embeddings():
    return torch.randn(2, WIDTH, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def release(tmp_path, lora, embeddings):
    """(LoRA path, embeddings path) laid out as the 4DNeX release."""
    path = write_release(tmp_path, lora, embeddings)
    return path, tmp_path / "learnable_domain_embeddings.pt"


def test_state_dict_round_trip(embeddings):
    layers = (LoraLayer("blocks.0.attn1.to_q", torch.randn(3, WIDTH), torch.randn(WIDTH, 3), 1.5),
              LoraLayer("blocks.1.ffn.net.2", torch.randn(5, 32), torch.randn(WIDTH, 5), 5.0))
    state_dict, metadata = to_fourdnex_state_dict(layers, embeddings)
    assert metadata == {"format": "fourdnex-lora", "rank": "mixed", "alpha": "mixed"}
    assert state_dict["transformer.blocks.1.ffn.net.2.alpha"].shape == ()
    parsed = parse_lora_state_dict(state_dict, metadata)
    assert parsed.format is LoraFormat.FOURDNEX
    assert torch.equal(parsed.domain_embeddings, embeddings)
    for original, read in zip(layers, parsed.layers, strict=True):
        assert read.module == original.module and read.alpha == original.alpha
        assert torch.equal(read.down, original.down) and torch.equal(read.up, original.up)


def test_converted_release_stores_alpha_and_embeddings(tmp_path, release, lora, embeddings):
    out = tmp_path / "4dnex.safetensors"
    convert_release_lora(*release, out)
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata() == {"format": "fourdnex-lora", "rank": str(RANK), "alpha": f"{RANK / 2:g}"}
        assert handle.get_tensor("transformer.blocks.0.attn1.to_q.alpha").item() == RANK / 2
    converted = read_lora(out, tiny_wan())
    assert converted.format is LoraFormat.FOURDNEX
    assert torch.equal(converted.domain_embeddings, embeddings)
    assert {layer.module: (layer.down, layer.up) for layer in converted.layers}.keys() == lora.keys()
    for layer in converted.layers:
        assert torch.equal(layer.down, lora[layer.module][0]) and torch.equal(layer.up, lora[layer.module][1])
        assert layer.alpha == RANK / 2
    with pytest.raises(ValueError, match="already exists"):
        convert_release_lora(*release, out)


def test_converted_file_on_the_4dnex_transformer_reproduces_the_release(tmp_path, release):
    """Ours: one file, default strength. Release: diffusers load + fuse_lora(0.5) + embeddings assigned."""
    out = convert_release_lora(*release, tmp_path / "4dnex.safetensors")
    ours = tiny_wan(cls=FourDNeXTransformer3DModel)
    fuse_lora(ours, read_lora(tmp_path / "4dnex.safetensors", ours).layers)
    set_domain_embeddings(ours, out.domain_embeddings)

    reference = diffusers_fused(release[0], 0.5, model=tiny_wan(cls=FourDNeXTransformer3DModel))
    reference.domain_embeddings.data = torch.load(release[1], weights_only=True)
    base = run(tiny_wan(cls=FourDNeXTransformer3DModel))
    expected = run(reference)
    assert not torch.allclose(expected, base, atol=1e-3)
    torch.testing.assert_close(run(ours), expected, rtol=1e-5, atol=1e-5)


def test_cli_convert_lora(tmp_path, release):
    out = tmp_path / "cli.safetensors"
    args = ["convert-lora", str(release[0]), "--domain-embeddings", str(release[1]), "--out", str(out)]
    assert main(args) == 0
    assert read_lora(out).domain_embeddings.shape == (2, WIDTH)
    assert main(args) == 2  # exists
    assert main([*args, "--force"]) == 0
    assert main(["convert-lora", str(tmp_path / "missing.safetensors"), *args[2:], "--force"]) == 2


def test_embeddings_of_another_width_than_the_lora_are_refused(tmp_path, release):
    torch.save(torch.zeros(2, 16), tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match="model width"):
        convert_release_lora(release[0], tmp_path / "narrow.pt", tmp_path / "out.safetensors")


@pytest.mark.parametrize("content", [
    lambda t: t,
    lambda t: nn.Parameter(t),
    lambda t: {"learnable_domain_embeddings": t},
    lambda t: {"transformer.learnable_domain_embeddings": t, "step": 5000},
    lambda t: {"weight": t},
], ids=["tensor", "parameter", "dict", "prefixed-dict", "single-key"])
def test_domain_embeddings_file_layouts(tmp_path, embeddings, content):
    torch.save(content(embeddings), tmp_path / "e.pt")
    assert torch.equal(load_domain_embeddings(tmp_path / "e.pt"), embeddings)


class Opaque:
    """Any Python object: not allowed by weights_only."""


def test_pickle_with_arbitrary_objects_is_refused(tmp_path, embeddings):
    torch.save({"learnable_domain_embeddings": embeddings, "extra": Opaque()}, tmp_path / "e.pt")
    with pytest.raises(ValueError, match="refused"):
        load_domain_embeddings(tmp_path / "e.pt")


def test_domain_embeddings_shapes_are_checked(tmp_path, embeddings):
    torch.save(torch.zeros(3, WIDTH), tmp_path / "three.pt")
    with pytest.raises(ValueError, match=r"must be \[2, inner_dim\]"):
        load_domain_embeddings(tmp_path / "three.pt")

    holder = nn.Module()
    holder.domain_embeddings = nn.Parameter(torch.zeros(2, 32))
    with pytest.raises(ValueError, match="width 24 but the transformer's width is 32"):
        set_domain_embeddings(holder, embeddings)
    with pytest.raises(ValueError, match="no 'domain_embeddings' parameter"):
        set_domain_embeddings(tiny_wan(), embeddings)

    holder.domain_embeddings = nn.Parameter(torch.zeros(2, WIDTH, dtype=torch.bfloat16))
    set_domain_embeddings(holder, embeddings)
    assert holder.domain_embeddings.dtype == torch.bfloat16
    torch.testing.assert_close(holder.domain_embeddings.float(), embeddings, rtol=1e-2, atol=1e-2)
