"""Fusing, unfusing and attaching LoRA layers: the update formula, removal, validation."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fourdnex_core.lora import LoraLayer, attach_lora, fuse_lora
from test_lora_formats import random_lora, run, tiny_wan


def layers_of(lora: dict, alpha: float) -> list[LoraLayer]:
    return [LoraLayer(module, down, up, alpha) for module, (down, up) in lora.items()]


def one_linear(dtype=torch.float32) -> tuple[nn.Module, LoraLayer]:
    """A model with one Linear 6 -> 5 named ``proj`` and a rank-3 LoRA for it (alpha 1.5)."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(6, 5))
    model.to(dtype)
    layer = LoraLayer("proj", torch.randn(3, 6), torch.randn(5, 3), alpha=1.5)
    return model, layer


def test_fused_weight_is_strength_alpha_over_rank_times_up_down():
    model, layer = one_linear()
    before = model.proj.weight.detach().clone()
    fuse_lora(model, [layer], strength=0.8)
    expected = before + 0.8 * 1.5 / 3 * layer.up @ layer.down
    torch.testing.assert_close(model.proj.weight.detach(), expected, rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_attached_factors_follow_the_input_dtype():
    model, layer = one_linear()
    attach_lora(model, [layer], strength=2.0)
    model.to(torch.float64)  # the hook's factors were float32: they must follow the input
    x = torch.randn(4, 6, dtype=torch.float64)
    weight, bias = model.proj.weight, model.proj.bias
    expected = x @ weight.T + bias + 2.0 * 1.5 / 3 * (x @ layer.down.double().T) @ layer.up.double().T
    actual = model(x)
    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


class CastingLinear(nn.Linear):
    """A Linear computing in its weight's dtype whatever the input dtype (as fp8 layers do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)


@torch.no_grad()
def test_attached_term_keeps_the_layers_output_dtype():
    model, layer = one_linear()
    model.proj = CastingLinear(6, 5, dtype=torch.bfloat16)
    attach_lora(model, [layer], strength=1.0)
    x = torch.randn(4, 6)
    weight, bias = model.proj.weight.float(), model.proj.bias.float()
    expected = x @ weight.T + bias + 1.5 / 3 * (x @ layer.down.T) @ layer.up.T
    actual = model(x)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual.float(), expected, rtol=2e-2, atol=2e-2)


def test_fusing_into_8bit_weights_is_refused():
    model, layer = one_linear()
    model.proj.weight = nn.Parameter(model.proj.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)
    with pytest.raises(ValueError, match="attach_lora"):
        fuse_lora(model, [layer])


def test_unfused_equals_fused_on_the_transformer_and_removal_restores_it():
    base_model = tiny_wan()
    layers = layers_of(random_lora(base_model), alpha=2.0)
    base = run(base_model)
    attached = attach_lora(base_model, layers, strength=0.7)
    unfused_output = run(base_model)
    attached.remove()
    assert torch.equal(run(base_model), base)

    fused_model = tiny_wan()
    fuse_lora(fused_model, layers, strength=0.7)
    fused_output = run(fused_model)
    assert not torch.allclose(fused_output, base, atol=1e-3)
    torch.testing.assert_close(unfused_output, fused_output, rtol=1e-5, atol=1e-5)


def test_unfuse_restores_float32_weights():
    model = tiny_wan()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    fused = fuse_lora(model, layers_of(random_lora(model), alpha=4.0), strength=1.0)
    assert not torch.equal(model.blocks[0].attn1.to_q.weight, before["blocks.0.attn1.to_q.weight"])
    fused.remove()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.detach(), before[name], rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="already unfused"):
        fused.remove()


def test_unfuse_in_bfloat16_is_within_one_rounding_step():
    model, layer = one_linear(torch.bfloat16)
    before = model.proj.weight.detach().clone()
    fused = fuse_lora(model, [layer], strength=1.0)
    fused_weight = model.proj.weight.detach().clone()
    fused.remove()
    error = (model.proj.weight.detach().float() - before.float()).abs()
    one_step = 2.0**-7 * torch.maximum(before.float().abs(), fused_weight.float().abs())
    assert torch.all(error <= one_step)


def test_unfuse_with_kept_originals_is_exact():
    model, layer = one_linear(torch.bfloat16)
    before = model.proj.weight.detach().clone()
    fused = fuse_lora(model, [layer], strength=1.0, keep_original=True)
    assert not torch.equal(model.proj.weight, before)
    fused.remove()
    assert torch.equal(model.proj.weight, before)


def test_a_bad_layer_leaves_the_model_untouched():
    model = tiny_wan()
    lora = random_lora(model)
    down, up = lora["blocks.0.ffn.net.0.proj"]  # Linear 24 -> 32
    layers = layers_of(lora, alpha=4.0)
    layers.append(LoraLayer("blocks.1.ffn.net.0.proj", up.T.contiguous(), down.T.contiguous(), 4.0))  # transposed
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"do not fit the Linear 24 -> 32"):
        fuse_lora(model, layers)
    with pytest.raises(ValueError, match="match no Linear"):
        attach_lora(model, [LoraLayer("blocks.0.norm2", down, up, 4.0)])
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert not any(m._forward_hooks for m in model.modules())


def test_strength_must_be_finite():
    model, layer = one_linear()
    with pytest.raises(ValueError, match="finite"):
        fuse_lora(model, [layer], strength=float("nan"))
