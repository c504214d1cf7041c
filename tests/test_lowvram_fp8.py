"""fp8 weights (quantized per layer) and fp8 matmuls (torch._scaled_mm, which also runs on the CPU)."""

import copy

import pytest
import torch
from torch import nn

from fourdnex_core.loading.fp8 import FP8Linear
from fourdnex_core.lowvram.block_swap import module_bytes
from fourdnex_core.lowvram.fp8_matmul import (
    FP8MatmulLinear,
    disable_fp8_matmul,
    enable_fp8_matmul,
    quantize_activations,
)
from fourdnex_core.lowvram.fp8_weights import fp8_layer_count, quantize_block_linears
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from tiny_configs import TINY_TRANSFORMER

# Sizes that are multiples of 16, as fp8 matmuls need (the 14B: 5120 / 13824).
SMALL = dict(num_attention_heads=2, attention_head_dim=32, in_channels=36, out_channels=16, text_dim=32, freq_dim=32,
             ffn_dim=128, num_layers=2, image_dim=32, added_kv_proj_dim=64)


def _model(config=SMALL):
    torch.manual_seed(0)
    return FourDNeXTransformer3DModel(**config).eval()


@torch.no_grad()
def _run(model, config=SMALL):
    generator = torch.Generator().manual_seed(3)
    return model(torch.randn(1, 36, 3, 8, 16, generator=generator), torch.tensor([500.0]),
                 torch.randn(1, 512, config["text_dim"], generator=generator),
                 torch.randn(1, 257, config["image_dim"], generator=generator), return_dict=False)[0]


def _relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_quantized_blocks_hold_fp8_and_stay_close():
    model = _model()
    reference = _run(model)
    before = module_bytes(model.blocks)
    linears = sum(isinstance(m, nn.Linear) for m in model.blocks.modules())
    assert quantize_block_linears(model) == linears == fp8_layer_count(model)
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in model.blocks.modules() if isinstance(m, nn.Linear))
    assert model.proj_out.weight.dtype == torch.float32  # outside the blocks: untouched
    assert module_bytes(model.blocks) < 0.4 * before
    assert 0 < _relative(_run(model), reference) < 0.05  # measured 0.019
    assert quantize_block_linears(model) == 0  # already fp8


def test_quantizing_refuses_layers_with_hooks():
    model = _model()
    model.blocks[1].attn1.to_q.register_forward_hook(lambda *args: None)
    with pytest.raises(ValueError, match="blocks.1.attn1.to_q.*LoRA"):
        quantize_block_linears(model)


def test_activation_quantization_round_trips():
    x = torch.randn(8, 32) * torch.logspace(-3, 2, 8)[:, None]
    for scaling, shape in (("row", (8, 1)), ("tensor", ())):
        quantized, scale = quantize_activations(x, scaling)
        assert quantized.dtype == torch.float8_e4m3fn and tuple(scale.shape) == shape
        assert _relative(quantized.float() * scale, x) < 0.05
    rows, _ = quantize_activations(x, "row")
    whole, _ = quantize_activations(x, "tensor")
    # Per-row scales keep small rows accurate; one scale for all flushes them toward zero.
    row_error = (rows[:1].float() * quantize_activations(x, "row")[1][:1] - x[:1]).abs().max()
    tensor_error = (whole[:1].float() * quantize_activations(x, "tensor")[1] - x[:1]).abs().max()
    assert row_error < tensor_error


def test_scaled_mm_layer_computes_the_dequantized_product():
    torch.manual_seed(1)
    linear = nn.Linear(32, 48)
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.ModuleDict({"proj": linear})])
    quantize_block_linears(model)
    layer = model.blocks[0]["proj"]
    x = torch.randn(5, 7, 32)
    upcast = layer(x)
    assert enable_fp8_matmul(model, "cpu", activation_scaling="row") == 1
    assert type(layer) is FP8MatmulLinear
    x_fp8, x_scale = quantize_activations(x.reshape(-1, 32), "row")
    expected = (x_fp8.float() * x_scale) @ (layer.weight.float() * layer.scale_weight).T + layer.bias
    torch.testing.assert_close(layer(x), expected.reshape(5, 7, 48), rtol=1e-5, atol=1e-5)
    assert _relative(layer(x), upcast) < 0.05
    disable_fp8_matmul(model)
    assert type(layer) is FP8Linear and torch.equal(layer(x), upcast)


def test_fp8_matmul_model_keeps_hooks_and_stays_close():
    model = _model()
    reference = _run(model)
    quantize_block_linears(model)
    fired = []
    model.blocks[0].ffn.net[2].register_forward_hook(lambda *args: fired.append(1))
    assert enable_fp8_matmul(model, "cpu") == fp8_layer_count(model)
    matmul = _run(model)
    assert fired  # same layer objects: hooks (an attached LoRA) survive the switch
    assert 0 < _relative(matmul, reference) < 0.05  # measured 0.022


def test_layers_that_do_not_fit_keep_the_upcast_path():
    model = _model(TINY_TRANSFORMER)  # width 24: not a multiple of 16
    reference = copy.deepcopy(model)
    quantize_block_linears(model)
    quantize_block_linears(reference)
    assert enable_fp8_matmul(model, "cpu") == 0  # every tiny layer has a side of 24
    assert not any(isinstance(m, FP8MatmulLinear) for m in model.modules())
    assert torch.equal(_run(model, TINY_TRANSFORMER), _run(reference, TINY_TRANSFORMER))
    with pytest.raises(ValueError, match="no fp8 layers"):
        enable_fp8_matmul(_model(), "cpu")
    with pytest.raises(RuntimeError, match="CUDA"):
        enable_fp8_matmul(model, "mps")
