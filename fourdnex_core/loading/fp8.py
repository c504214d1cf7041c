"""fp8 weights kept in fp8 in memory and upcast one layer at a time, inside ``forward``.

ComfyUI ships the big models in two fp8 flavours, both readable here:

- ``*_fp8_e4m3fn.safetensors``: Linear weights stored as ``float8_e4m3fn``; the real weight is
  ``weight.to(float)``.
- ``*_fp8_scaled.safetensors``: the same plus one float32 scale per weight, stored beside it as
  ``<module>.scale_weight`` (and a ``scaled_fp8`` marker tensor); the real weight is
  ``weight.to(float) * scale_weight``. ``<module>.scale_input`` tensors (for fp8 matmuls) may
  be present and are not used.

:class:`FP8Linear` is an ``nn.Linear`` whose ``weight`` stays fp8 (half the memory of bf16) and
whose ``forward`` dequantizes it to ``compute_dtype`` just for that call, so only one layer's
weight exists in high precision at a time.

Public API (also used to load fp8 text encoders)::

    is_fp8_dtype(torch.float8_e4m3fn)                                   # True
    layer = quantized_linear_from(linear, weight_fp8, scale, torch.bfloat16)
    weight_fp8, scale = quantize_fp8(weight, scaled=True)                 # for writers
    weight = dequantize_fp8(weight_fp8, scale, torch.bfloat16)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPES: tuple[torch.dtype, ...] = (torch.float8_e4m3fn, torch.float8_e5m2)


def is_fp8_dtype(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is one of the 8-bit float formats checkpoints use."""
    return dtype in FP8_DTYPES


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``weight.to(float) * scale`` in ``dtype``; ``scale`` is a one-element float tensor or ``None``.

    Every fp8 value is exact in bf16/fp16/fp32, so without a scale this is a lossless cast; with
    a scale the product is taken in float32 and rounded once to ``dtype``.
    """
    if scale is None:
        return weight.to(dtype)
    return (weight.to(torch.float32) * scale.to(device=weight.device, dtype=torch.float32)).to(dtype)


def quantize_fp8(
    weight: torch.Tensor, fp8_dtype: torch.dtype = torch.float8_e4m3fn, *, scaled: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Round ``weight`` to fp8: ``(weight_fp8, scale)`` with ``weight ~= dequantize_fp8(weight_fp8, scale)``.

    With ``scaled=True`` one per-tensor scale ``max|weight| / fp8_max`` (float32, shape ``[]``)
    uses the whole fp8 range; otherwise values are clamped to the fp8 range and ``scale`` is
    ``None``.
    """
    if not is_fp8_dtype(fp8_dtype):
        raise ValueError(f"fp8_dtype must be one of {FP8_DTYPES}, got {fp8_dtype}.")
    limit = torch.finfo(fp8_dtype).max
    values = weight.to(torch.float32)
    if not scaled:
        return values.clamp(-limit, limit).to(fp8_dtype), None
    amax = values.abs().max() if values.numel() else values.new_tensor(0.0)
    scale = torch.where(amax > 0, amax / limit, torch.ones_like(amax)).reshape(())
    return (values / scale).clamp(-limit, limit).to(fp8_dtype), scale


class FP8Linear(nn.Linear):
    """``nn.Linear`` with an fp8 ``weight`` [out_features, in_features], dequantized in ``forward``.

    Attributes:
        weight: fp8 parameter (no gradient).
        scale_weight: float32 buffer, shape ``[]``, or ``None`` for unscaled fp8.
        bias: ``compute_dtype`` parameter [out_features] or ``None``.
        compute_dtype: the dtype of the matmul; inputs are cast to it, outputs come out in it.

    Build one with :func:`quantized_linear_from`, or with ``device="meta"`` as a placeholder
    to be filled by ``load_state_dict(..., assign=True)``. Merging a LoRA into the weight needs
    :meth:`dequantized_weight` first; in-place arithmetic on fp8 is not supported by torch.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        fp8_dtype: torch.dtype = torch.float8_e4m3fn,
        scaled: bool = False,
        compute_dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ) -> None:
        if not is_fp8_dtype(fp8_dtype):
            raise ValueError(f"fp8_dtype must be one of {FP8_DTYPES}, got {fp8_dtype}.")
        super().__init__(in_features, out_features, bias=bias, device="meta")
        self.compute_dtype = compute_dtype
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=fp8_dtype, device=device), requires_grad=False
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=compute_dtype, device=device))
        scale = torch.ones((), dtype=torch.float32, device=device) if scaled else None
        self.register_buffer("scale_weight", scale)

    def reset_parameters(self) -> None:
        """Nothing to initialise: the weights always come from a checkpoint."""

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The real weight [out_features, in_features] in ``dtype`` (default ``compute_dtype``)."""
        return dequantize_fp8(self.weight, self.scale_weight, dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_features] -> [..., out_features], computed in ``compute_dtype``."""
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return F.linear(x.to(self.compute_dtype), self.dequantized_weight(), bias)

    def extra_repr(self) -> str:
        scaled = "scaled " if self.scale_weight is not None else ""
        return f"{super().extra_repr()}, weight={scaled}{self.weight.dtype}, compute_dtype={self.compute_dtype}"


def quantized_linear_from(
    linear: nn.Linear, weight_fp8: torch.Tensor, scale: torch.Tensor | None, compute_dtype: torch.dtype
) -> FP8Linear:
    """An :class:`FP8Linear` replacing ``linear``, holding ``weight_fp8`` (and ``scale``) as they are.

    Args:
        linear: the layer being replaced; gives the sizes and the bias (may be on ``meta``,
            then the bias stays a placeholder for ``load_state_dict(assign=True)``).
        weight_fp8: [out_features, in_features] in an fp8 dtype; used without a copy.
        scale: one-element float tensor (``<module>.scale_weight``) or ``None``.
        compute_dtype: dtype the layer computes in.
    """
    expected = (linear.out_features, linear.in_features)
    if not is_fp8_dtype(weight_fp8.dtype):
        raise ValueError(f"weight_fp8 must have an fp8 dtype {FP8_DTYPES}, got {weight_fp8.dtype}.")
    if tuple(weight_fp8.shape) != expected:
        raise ValueError(f"weight_fp8 has shape {tuple(weight_fp8.shape)}; the layer needs {expected}.")
    if scale is not None and scale.numel() != 1:
        raise ValueError(f"scale must hold one value per weight, got shape {tuple(scale.shape)}.")
    layer = FP8Linear(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        fp8_dtype=weight_fp8.dtype,
        scaled=scale is not None,
        compute_dtype=compute_dtype,
        device="meta",
    )
    state = {"weight": weight_fp8}
    if scale is not None:
        state["scale_weight"] = scale.to(torch.float32).reshape(())
    if linear.bias is not None and not linear.bias.is_meta:
        state["bias"] = linear.bias.detach().to(compute_dtype)
    layer.load_state_dict(state, strict=False, assign=True)
    return layer
