"""fp8 weights for a transformer loaded in 16/32-bit: quantize the block Linears one at a time.

ComfyUI's ``*_fp8_e4m3fn`` / ``*_fp8_scaled`` files already load as fp8
(:func:`~fourdnex_core.loading.transformer_loader.load_transformer` keeps them in fp8). For a
bf16 checkpoint, :func:`quantize_block_linears` turns every ``nn.Linear`` inside
``model.blocks`` into an :class:`~fourdnex_core.loading.fp8.FP8Linear` (e4m3fn, one float32
scale per weight: ``max|W| / 448``), layer by layer, so memory never holds more than the model
plus one layer. The 14B's blocks drop from ~32 GB (bf16) to ~16 GB; embeddings, norms and the
head stay in their dtype.

Order matters: quantize after fusing a LoRA (a fused update is part of the weight) and before
attaching one with hooks (the new layers are new modules; hooks on the old ones would be lost, so
that is refused).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from fourdnex_core.loading.fp8 import FP8Linear, quantize_fp8, quantized_linear_from

from .block_swap import GIB, module_bytes, transformer_blocks

logger = logging.getLogger(__name__)


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


@torch.no_grad()
def quantize_block_linears(
    model: nn.Module,
    *,
    fp8_dtype: torch.dtype = torch.float8_e4m3fn,
    scaled: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> int:
    """Replace every plain ``nn.Linear`` in ``model.blocks`` by an fp8 :class:`FP8Linear`, in place.

    Args:
        model: a transformer with a ``blocks`` ModuleList.
        fp8_dtype: storage dtype (``torch.float8_e4m3fn``, the one fp8 matmuls take, or ``e5m2``).
        scaled: one per-tensor scale (``max|W| / fp8_max``, as ComfyUI's fp8_scaled files); without
            it weights are only clamped to the fp8 range.
        compute_dtype: the layers' compute dtype; default: each weight's current dtype.
    Returns:
        The number of layers quantized (layers already fp8 are left alone).
    """
    before = module_bytes(model)
    count = 0
    for block_index, block in enumerate(transformer_blocks(model)):
        for name, module in list(block.named_modules()):
            if type(module) is not nn.Linear:
                continue
            if _has_hooks(module):
                raise ValueError(
                    f"blocks.{block_index}.{name} has forward hooks (an attached LoRA?); quantizing replaces the layer "
                    "and would drop them. Quantize first, then attach the LoRA (or fuse the LoRA before quantizing)."
                )
            weight_fp8, scale = quantize_fp8(module.weight.detach(), fp8_dtype, scaled=scaled)
            layer = quantized_linear_from(module, weight_fp8, scale, compute_dtype or module.weight.dtype)
            block.set_submodule(name, layer)
            count += 1
    logger.info("Quantized %d block Linear layers to %s: %.2f GiB -> %.2f GiB.", count, fp8_dtype,
                before / GIB, module_bytes(model) / GIB)
    return count


def fp8_layer_count(model: nn.Module) -> int:
    """How many :class:`FP8Linear` layers ``model`` holds."""
    return sum(isinstance(module, FP8Linear) for module in model.modules())
