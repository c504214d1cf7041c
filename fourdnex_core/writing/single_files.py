"""Write transformer and VAE single files in the layout ComfyUI users have (original Wan names).

The files carry ``fourdnex_config`` metadata (component + diffusers config), so the loaders
recognise models of any size, including the tiny ones tests build. Diffusers folders are
written with diffusers' own ``save_pretrained``.

Writes are atomic (:func:`fourdnex_core.loading.safetensors_io.save_tensors`): an interrupted
write never leaves a truncated file under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKLWan, ModelMixin
from torch import nn

from fourdnex_core.loading.detect import SCALE_SUFFIX, SCALED_FP8_MARKER
from fourdnex_core.loading.fp8 import dequantize_fp8, is_fp8_dtype, quantize_fp8
from fourdnex_core.loading.safetensors_io import component_metadata, save_tensors
from fourdnex_core.loading.wan_keys import ORIGINAL_PREFIXES, diffusers_to_original
from fourdnex_core.loading.wan_vae_keys import vae_state_dict_to_original

Fp8Format = Literal["none", "e4m3fn", "scaled"]
COMFY_PREFIX = ORIGINAL_PREFIXES[0]  # "model.diffusion_model."


def save_transformer_single_file(
    model: ModelMixin,
    path: str | os.PathLike[str],
    dtype: torch.dtype = torch.bfloat16,
    *,
    prefix: bool = True,
    fp8: Fp8Format = "none",
) -> Path:
    """Save a ``WanTransformer3DModel`` (or subclass) as one safetensors file with original Wan names.

    Args:
        model: the transformer; fp8 layers (:class:`~fourdnex_core.loading.fp8.FP8Linear`) are
            dequantized before writing.
        path: the ``.safetensors`` file to write.
        dtype: dtype of every floating tensor that is not written as fp8.
        prefix: prepend ``model.diffusion_model.`` to every name, as ComfyUI files do.
        fp8: ``"none"``; ``"e4m3fn"`` stores the Linear weights of the blocks as
            ``float8_e4m3fn`` (clamped); ``"scaled"`` stores them with a per-tensor
            ``<module>.scale_weight`` and adds the ``scaled_fp8`` marker (ComfyUI fp8_scaled).

    Returns:
        ``path`` as a ``Path``.
    """
    if fp8 not in ("none", "e4m3fn", "scaled"):
        raise ValueError(f"fp8 must be 'none', 'e4m3fn' or 'scaled', got {fp8!r}.")
    name_prefix = COMFY_PREFIX if prefix else ""
    state_dict = model.state_dict()
    quantized = set()
    if fp8 != "none":
        quantized = {
            f"{name}.weight"
            for name, module in model.named_modules()
            if name.startswith("blocks.") and isinstance(module, nn.Linear)
        }
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        module, _, leaf = name.rpartition(".")
        if leaf == SCALE_SUFFIX:
            continue
        if is_fp8_dtype(tensor.dtype):
            tensor = dequantize_fp8(tensor, state_dict.get(f"{module}.{SCALE_SUFFIX}"), torch.float32)
        key = name_prefix + (diffusers_to_original(name) or name)
        if name in quantized:
            tensors[key], scale = quantize_fp8(tensor, scaled=fp8 == "scaled")
            if scale is not None:
                tensors[f"{key.rpartition('.')[0]}.{SCALE_SUFFIX}"] = scale
        else:
            tensors[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    if fp8 == "scaled":
        tensors[name_prefix + SCALED_FP8_MARKER] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return save_tensors(path, tensors, component_metadata("transformer", model.config))


def save_vae_single_file(
    vae: AutoencoderKLWan, path: str | os.PathLike[str], *, dtype: torch.dtype | None = None
) -> Path:
    """Save an ``AutoencoderKLWan`` as one safetensors file with the original Wan2.1 VAE names.

    ``dtype`` converts every floating tensor (``None`` keeps the model's dtypes).
    """
    renamed = vae_state_dict_to_original(vae.state_dict(), vae.config.num_res_blocks)
    if dtype is not None:
        renamed = {name: t.to(dtype) if t.is_floating_point() else t for name, t in renamed.items()}
    return save_tensors(path, renamed, component_metadata("vae", vae.config))

