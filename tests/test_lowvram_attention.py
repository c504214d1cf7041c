"""Attention backends by name (clear errors for missing packages) and torch.compile of the blocks."""

import pytest
import torch
from diffusers.models.attention_dispatch import _AttentionBackendRegistry

from fourdnex_core.lowvram.attention import (
    BACKENDS,
    available_attention_backends,
    is_installed,
    set_attention_backend,
)
from fourdnex_core.lowvram.block_swap import BlockSwap
from fourdnex_core.lowvram.compile import compile_blocks, uncompile_blocks
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from tiny_configs import TINY_TRANSFORMER


def _model():
    torch.manual_seed(0)
    return FourDNeXTransformer3DModel(**TINY_TRANSFORMER).eval()


@torch.no_grad()
def _run(model):
    generator = torch.Generator().manual_seed(4)
    return model(torch.randn(1, 36, 2, 4, 8, generator=generator), torch.tensor([500.0]),
                 torch.randn(1, 512, 32, generator=generator), torch.randn(1, 257, 24, generator=generator),
                 return_dict=False)[0]


def test_math_backend_matches_sdpa_and_touches_no_other_model():
    model, other = _model(), _model()
    reference = _run(model)
    active = _AttentionBackendRegistry.get_active_backend()[0]
    assert set_attention_backend(model, "math", "cpu") == 2 * TINY_TRANSFORMER["num_layers"]
    math = _run(model)
    torch.testing.assert_close(math, reference, rtol=0, atol=1e-5)  # measured 1e-6 (BENCHMARKS.md)
    assert _AttentionBackendRegistry.get_active_backend()[0] == active  # no process-wide change
    assert torch.equal(_run(other), reference)
    set_attention_backend(model, "sdpa", "cpu")
    assert torch.equal(_run(model), reference)


@pytest.mark.parametrize("name", ["sage", "flash", "flash3", "xformers"])
def test_optional_backends_explain_what_is_missing(name):
    backend = BACKENDS[name]
    if is_installed(backend):
        with pytest.raises(ValueError, match="CUDA"):  # installed, but this is the CPU
            set_attention_backend(_model(), name, "cpu")
    else:
        with pytest.raises(ImportError, match=f"`{backend.package}`.*not installed.*sdpa"):
            set_attention_backend(_model(), name, "cuda")
        assert name not in available_attention_backends("cuda")


def test_a_package_older_than_diffusers_takes_is_named_with_both_versions(monkeypatch):
    import importlib.metadata
    import importlib.util

    find_spec, version = importlib.util.find_spec, importlib.metadata.version
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "sageattention" else find_spec(name, *a))
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "1.0.6" if name == "sageattention" else version(name))
    with pytest.raises(ImportError, match=r"sageattention >= 2\.1\.1 .*1\.0\.6 is installed.*from source.*sdpa"):
        set_attention_backend(_model(), "sage", "cuda")
    assert "sage" not in available_attention_backends("cuda")
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "2.2.0" if name == "sageattention" else version(name))
    assert "sage" in available_attention_backends("cuda")  # recent enough (the check is the version, not a GPU)


def test_unknown_backend_and_non_diffusers_models():
    with pytest.raises(ValueError, match="sdpa"):
        set_attention_backend(_model(), "fast", "cpu")
    with pytest.raises(TypeError, match="diffusers"):
        set_attention_backend(torch.nn.Linear(2, 2), "math", "cpu")
    cpu = available_attention_backends("cpu")
    assert cpu[:2] == ["sdpa", "math"] and all(not BACKENDS[name].cuda_only for name in cpu)


def test_compiled_blocks_give_the_same_output_and_keep_hooks():
    model = _model()
    reference = _run(model)
    swap = BlockSwap(model, 1, "cpu", trace=True)
    assert compile_blocks(model, "cpu", backend="eager") == TINY_TRANSFORMER["num_layers"]
    assert torch.equal(_run(model), reference)
    assert ("offload", 0) in swap.events  # block swap's hooks still run around the compiled forward
    assert uncompile_blocks(model) == TINY_TRANSFORMER["num_layers"]
    assert "forward" not in vars(model.blocks[0])
    assert torch.equal(_run(model), reference)
    with pytest.raises(ValueError, match="mode"):
        compile_blocks(model, "cpu", mode="fastest")
