"""fp8 matmuls: multiply fp8 weights with fp8-quantized activations (``torch._scaled_mm``).

:class:`~fourdnex_core.loading.fp8.FP8Linear` stores its weight in fp8 and upcasts it for every
call: half the memory of bf16, bf16 speed. On GPUs with fp8 tensor cores (compute capability
8.9+: Ada, Hopper, Blackwell) the matmul itself can run in fp8 at up to twice the bf16 rate:
:func:`enable_fp8_matmul` switches the model's fp8 layers to :class:`FP8MatmulLinear`, which

1. quantizes the input x [M, in] to e4m3fn with a dynamic scale: one per row (token) with
   ``activation_scaling="row"`` (more accurate; Hopper+ with bf16 outputs, and the CPU) or one
   for the whole tensor (``"tensor"``, all fp8 GPUs);
2. computes ``_scaled_mm(x_fp8, W_fp8^T) * scale_x * scale_W`` in the layer's compute dtype, then
   adds the bias.

Layers whose weight is not e4m3fn or whose sizes are not multiples of 16 keep the upcast path.
The switch changes the class of the existing layer objects only: weights, scales and hooks
(an attached LoRA) stay; :func:`disable_fp8_matmul` switches back.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from fourdnex_core.loading.fp8 import FP8Linear

logger = logging.getLogger(__name__)

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max
ACTIVATION_SCALINGS = ("auto", "row", "tensor")
_MIN_SCALE = 1e-12


def check_fp8_matmul_device(device: torch.device | str) -> None:
    """Raise a clear error unless ``device`` can run ``torch._scaled_mm`` (CPU, or CUDA with CC 8.9+)."""
    device = torch.device(device)
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise RuntimeError(f"fp8 matmul runs on CUDA GPUs (and the CPU), not on {device}; use fp8 weights only.")
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        raise RuntimeError(
            f"fp8 matmul needs fp8 tensor cores (compute capability 8.9+: RTX 40xx, L4/L40, H100 or newer); "
            f"{torch.cuda.get_device_name(device)} is sm_{capability[0]}{capability[1]}. Keep fp8 weights with "
            "per-layer upcast (fp8='weights')."
        )


def resolve_activation_scaling(scaling: str, device: torch.device | str, compute_dtype: torch.dtype) -> str:
    """``"auto"`` -> ``"row"`` where rowwise ``_scaled_mm`` exists (CPU; Hopper+ with bf16), else ``"tensor"``."""
    if scaling not in ACTIVATION_SCALINGS:
        raise ValueError(f"activation_scaling must be one of {ACTIVATION_SCALINGS}, got {scaling!r}.")
    if scaling != "auto":
        return scaling
    device = torch.device(device)
    if device.type == "cpu":
        return "row"
    rowwise = torch.cuda.get_device_capability(device) >= (9, 0) and compute_dtype == torch.bfloat16
    return "row" if rowwise else "tensor"


def quantize_activations(x: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (x_fp8 [M, K] e4m3fn, scale float32 [M, 1] for "row" or [] for "tensor")."""
    magnitude = x.abs().amax(dim=1, keepdim=True) if scaling == "row" else x.abs().amax()
    scale = (magnitude.float() / E4M3_MAX).clamp(min=_MIN_SCALE)
    quantized = (x / scale.to(x.dtype)).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).contiguous()  # row-major for _scaled_mm
    return quantized, scale


class FP8MatmulLinear(FP8Linear):
    """An :class:`FP8Linear` whose matmul runs in fp8 (see the module docstring).

    ``activation_scaling`` ("row" or "tensor") is set by :func:`enable_fp8_matmul`.
    """

    activation_scaling: str = "tensor"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_features] -> [..., out_features] in ``compute_dtype``."""
        rows = x.reshape(-1, x.shape[-1]).to(self.compute_dtype)
        x_fp8, x_scale = quantize_activations(rows, self.activation_scaling)
        w_scale = self.scale_weight if self.scale_weight is not None else torch.ones((), device=x.device)
        w_scale = w_scale.to(device=x.device, dtype=torch.float32)
        if self.activation_scaling == "row":
            w_scale = w_scale.reshape(1, 1).expand(1, self.out_features).contiguous()
        out = torch._scaled_mm(x_fp8, self.weight.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=self.compute_dtype)
        if self.bias is not None:
            out = out + self.bias.to(self.compute_dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def _matmul_ready(layer: FP8Linear) -> bool:
    return layer.weight.dtype == E4M3 and layer.in_features % 16 == 0 and layer.out_features % 16 == 0


def enable_fp8_matmul(model: nn.Module, device: torch.device | str, *, activation_scaling: str = "auto") -> int:
    """Switch every eligible :class:`FP8Linear` of ``model`` to :class:`FP8MatmulLinear`.

    Args:
        model: a model holding fp8 layers (an fp8 checkpoint, or after ``quantize_block_linears``).
        device: where the layers will compute (checked for fp8 support).
        activation_scaling: "auto", "row" or "tensor" (see the module docstring).
    Returns:
        The number of layers switched.
    Raises:
        RuntimeError: the device has no fp8 matmul; ValueError: the model has no fp8 layers.
    """
    check_fp8_matmul_device(device)
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    if not layers:
        raise ValueError("The model has no fp8 layers: load an fp8 checkpoint or call quantize_block_linears first.")
    ready = [layer for layer in layers if _matmul_ready(layer)]
    for layer in ready:
        layer.__class__ = FP8MatmulLinear
        layer.activation_scaling = resolve_activation_scaling(activation_scaling, device, layer.compute_dtype)
    if len(ready) < len(layers):
        logger.warning("%d fp8 layers keep the upcast path (weight not e4m3fn, or sizes not multiples of 16).",
                       len(layers) - len(ready))
    logger.info("fp8 matmul on for %d layers (%s activation scaling).", len(ready),
                ready[0].activation_scaling if ready else "-")
    return len(ready)


def disable_fp8_matmul(model: nn.Module) -> int:
    """Switch :class:`FP8MatmulLinear` layers back to the upcast path; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, FP8MatmulLinear)]
    for layer in layers:
        layer.__class__ = FP8Linear
        vars(layer).pop("activation_scaling", None)
    return len(layers)
