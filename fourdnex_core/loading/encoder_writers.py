"""Writing UMT5 and CLIP vision encoders as ComfyUI-style single files, and tiny configs for tests.

The files have the layout of ComfyUI's ``models/text_encoders/umt5_xxl_*.safetensors`` and
``models/clip_vision/clip_vision_h.safetensors`` (transformers' module names), plus this project's
``fourdnex_config`` metadata so :mod:`.text_encoder_loader` and :mod:`.clip_vision_loader` rebuild
any model size. Diffusers folders need nothing here: ``model.save_pretrained(folder)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import (
    CLIPVisionConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    UMT5Config,
    UMT5EncoderModel,
)

from .clip_vision_loader import CLIP_VISION_COMPONENT, FILE_PREFIX, PROJECTION_KEY
from .detect import SCALED_FP8_MARKER
from .fp8 import quantize_fp8
from .safetensors_io import component_metadata
from .text_encoder_loader import SCALE_WEIGHT_SUFFIX, SPIECE_KEY, TEXT_ENCODER_COMPONENT, TIED_EMBEDDING_KEY
from .tokenizer import spiece_bytes

logger = logging.getLogger(__name__)


def tiny_text_encoder_config(vocab_size: int = 512) -> UMT5Config:
    """A 2-layer UMT5 encoder with d_model 32 (the tiny transformer's ``text_dim``)."""
    return UMT5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
    )


def tiny_clip_vision_config() -> CLIPVisionConfig:
    """A 2-layer CLIP ViT/14 at 224 px with hidden size 24 (the tiny transformer's ``image_dim``).

    Same patch grid as ViT-H/14, so it yields ``[B, 257, 24]`` and uses the real image processor.
    """
    return CLIPVisionConfig(
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=14,
        image_size=224,
        projection_dim=16,
        hidden_act="gelu",
    )


def _linear_weight_names(model: nn.Module) -> set[str]:
    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def save_text_encoder_single_file(
    model: UMT5EncoderModel,
    tokenizer_or_spiece_bytes: PreTrainedTokenizerBase | bytes | str | os.PathLike,
    path: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    fp8_scaled: bool = False,
) -> Path:
    """Write a UMT5 encoder as ComfyUI's ``umt5_xxl_fp16`` / ``umt5_xxl_fp8_e4m3fn_scaled`` file.

    Tensors: ``shared.weight`` (the tied ``encoder.embed_tokens.weight`` is not repeated), every
    ``encoder.*`` tensor, and ``spiece_model`` (uint8 bytes of ``spiece.model``). With
    ``fp8_scaled`` every Linear weight is float8_e4m3fn beside a float32 ``<module>.scale_weight``
    and a ``scaled_fp8`` marker is added; embeddings and norms stay in ``dtype``.

    Args:
        model: the encoder.
        tokenizer_or_spiece_bytes: ``spiece.model`` bytes, file or folder, or a tokenizer loaded
            from such a folder (see :func:`.tokenizer.spiece_bytes`).
        path: output ``.safetensors`` file.
        dtype: storage dtype of the non-fp8 tensors.
        fp8_scaled: store Linear weights as scaled fp8.
    """
    state = {name: t for name, t in model.state_dict().items() if name != TIED_EMBEDDING_KEY}
    fp8_names = _linear_weight_names(model) if fp8_scaled else set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in fp8_names:
            weight, scale = quantize_fp8(tensor, torch.float8_e4m3fn, scaled=True)
            tensors[name] = weight
            tensors[name[: -len(".weight")] + SCALE_WEIGHT_SUFFIX] = scale
        else:
            tensors[name] = tensor.detach().to(dtype).contiguous()
    if fp8_scaled:
        tensors[SCALED_FP8_MARKER] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    tensors[SPIECE_KEY] = torch.frombuffer(bytearray(spiece_bytes(tokenizer_or_spiece_bytes)), dtype=torch.uint8)
    return _save(tensors, path, TEXT_ENCODER_COMPONENT, model)


def save_clip_vision_single_file(
    model: PreTrainedModel, path: str | os.PathLike, dtype: torch.dtype = torch.float16
) -> Path:
    """Write a CLIP vision model as ComfyUI's ``clip_vision_h.safetensors`` (``vision_model.*`` keys).

    Args:
        model: a ``CLIPVisionModel`` or ``CLIPVisionModelWithProjection`` (``visual_projection``
            is kept when present).
        path: output ``.safetensors`` file.
        dtype: storage dtype.
    """
    tensors = {_clip_file_name(name): t.detach().to(dtype).contiguous() for name, t in model.state_dict().items()}
    return _save(tensors, path, CLIP_VISION_COMPONENT, model)


def _clip_file_name(name: str) -> str:
    """The checkpoint name of a CLIP vision tensor: ``vision_model.*`` (transformers 5 drops the prefix)."""
    if name.startswith((FILE_PREFIX, PROJECTION_KEY)):
        return name
    return FILE_PREFIX + name


def _save(tensors: dict[str, torch.Tensor], path: str | os.PathLike, component: str, model: PreTrainedModel) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=component_metadata(component, model.config.to_diff_dict()))
    logger.info("wrote %s (%d tensors) to %s", component, len(tensors), path)
    return path
