"""Writing UMT5 and CLIP vision encoders as ComfyUI-style single files, and tiny configs for tests.

The files have the layout of ComfyUI's ``models/text_encoders/umt5_xxl_*.safetensors`` and
``models/clip_vision/clip_vision_h.safetensors`` (transformers' module names), plus this project's
``fourdnex_config`` metadata so :mod:`.text_encoder_loader` and :mod:`.clip_vision_loader` rebuild
any model size. Diffusers folders need nothing here: ``model.save_pretrained(folder)``.

:func:`write_random_text_encoder` and :func:`write_random_clip_vision` write the same files with
random weights straight from a config, one tensor in memory at a time, so full-size UMT5-XXL
(5.7B parameters, 11.4 GB in fp16) and CLIP ViT-H/14 files are made without holding the model.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    UMT5Config,
    UMT5EncoderModel,
)

from ..loading.clip_vision_loader import CLIP_VISION_COMPONENT, FILE_PREFIX, PROJECTION_KEY
from ..loading.detect import SCALED_FP8_MARKER
from ..loading.fp8 import quantize_fp8
from ..loading.safetensors_io import TensorLayout, component_metadata, save_tensors, write_safetensors
from ..loading.text_encoder_loader import SCALE_WEIGHT_SUFFIX, SPIECE_KEY, TEXT_ENCODER_COMPONENT, TIED_EMBEDDING_KEY
from ..loading.tokenizer import spiece_bytes

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
    tensors[SPIECE_KEY] = _spiece_tensor(tokenizer_or_spiece_bytes)
    return _save(tensors, path, TEXT_ENCODER_COMPONENT, model.config)


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
    return _save(tensors, path, CLIP_VISION_COMPONENT, model.config)


def _clip_file_name(name: str) -> str:
    """The checkpoint name of a CLIP vision tensor: ``vision_model.*`` (transformers 5 drops the prefix)."""
    if name.startswith((FILE_PREFIX, PROJECTION_KEY)):
        return name
    return FILE_PREFIX + name


def _spiece_tensor(tokenizer_or_spiece_bytes: PreTrainedTokenizerBase | bytes | str | os.PathLike) -> torch.Tensor:
    return torch.frombuffer(bytearray(spiece_bytes(tokenizer_or_spiece_bytes)), dtype=torch.uint8)


def _save(tensors: dict[str, torch.Tensor], path: str | os.PathLike, component: str, config: PretrainedConfig) -> Path:
    path = save_tensors(path, tensors, component_metadata(component, config.to_diff_dict()))
    logger.info("wrote %s (%d tensors) to %s", component, len(tensors), path)
    return path


# ---------------------------------------------------------------- random weights, streamed

# Spread of the norm scales around 1 and of the biases around 0. Not zero, so that comparing two
# implementations on these files also checks that each applies every norm scale and bias.
NORM_SCALE_STD = 0.05
BIAS_STD = 0.02


def umt5_init_std(name: str, config: UMT5Config) -> float | None:
    """Standard deviation of UMT5 tensor ``name`` in transformers' (Mesh TensorFlow) init.

    ``None`` for the RMS-norm scales, which start at 1 (see :func:`write_random_text_encoder`).
    """
    d_model, d_kv, num_heads, factor = config.d_model, config.d_kv, config.num_heads, config.initializer_factor
    if name.endswith("layer_norm.weight"):
        return None
    stds = {
        "shared.weight": 1.0,
        "SelfAttention.q.weight": (d_model * d_kv) ** -0.5,
        "SelfAttention.k.weight": d_model**-0.5,
        "SelfAttention.v.weight": d_model**-0.5,
        "SelfAttention.o.weight": (num_heads * d_kv) ** -0.5,
        "relative_attention_bias.weight": d_model**-0.5,
        "DenseReluDense.wi.weight": d_model**-0.5,
        "DenseReluDense.wi_0.weight": d_model**-0.5,
        "DenseReluDense.wi_1.weight": d_model**-0.5,
        "DenseReluDense.wo.weight": config.d_ff**-0.5,
    }
    for suffix, std in stds.items():
        if name.endswith(suffix):
            return factor * std
    raise ValueError(f"no init rule for UMT5 tensor {name!r}")


def clip_vision_init_std(name: str, config: CLIPVisionConfig) -> float | None:
    """Standard deviation of CLIP vision tensor ``name`` (file name) in transformers' init.

    ``None`` for LayerNorm scales and biases and for Linear biases, which start near 1 and 0
    (see :func:`write_random_clip_vision`).
    """
    hidden, factor = config.hidden_size, config.initializer_factor
    depth_std = hidden**-0.5 * (2 * config.num_hidden_layers) ** -0.5
    if name.endswith(".bias") or "layrnorm" in name or "layernorm" in name or "layer_norm" in name:
        return None
    stds = {
        "embeddings.class_embedding": hidden**-0.5,
        "embeddings.patch_embedding.weight": config.initializer_range,
        "embeddings.position_embedding.weight": config.initializer_range,
        "self_attn.q_proj.weight": depth_std,
        "self_attn.k_proj.weight": depth_std,
        "self_attn.v_proj.weight": depth_std,
        "self_attn.out_proj.weight": hidden**-0.5,
        "mlp.fc1.weight": (2 * hidden) ** -0.5,
        "mlp.fc2.weight": depth_std,
        PROJECTION_KEY: hidden**-0.5,
    }
    for suffix, std in stds.items():
        if name.endswith(suffix):
            return factor * std
    raise ValueError(f"no init rule for CLIP vision tensor {name!r}")


def _random_tensor(
    name: str, shape: tuple[int, ...], std: float | None, dtype: torch.dtype, generator: torch.Generator
) -> torch.Tensor:
    """``N(0, std^2)`` in ``dtype``; for ``std=None`` a norm scale ``1 + N(0, 0.05^2)`` or a bias ``N(0, 0.02^2)``."""
    tensor = torch.empty(shape, dtype=dtype)
    if std is not None:
        return tensor.normal_(0.0, std, generator=generator)
    if name.endswith(".bias"):
        return tensor.normal_(0.0, BIAS_STD, generator=generator)
    return tensor.normal_(1.0, NORM_SCALE_STD, generator=generator)


def _meta_layout(model_cls: type[PreTrainedModel], config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``model_cls(config)``'s state dict, from a model without weights."""
    with init_empty_weights(include_buffers=False):
        model = model_cls(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _stream(
    layout: TensorLayout,
    fixed: dict[str, torch.Tensor],
    init_std: Callable[[str], float | None],
    generator: torch.Generator,
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` in layout order: ``fixed[name]`` where given, else a fresh random tensor."""
    for name, (dtype, shape) in layout.items():
        yield name, fixed[name] if name in fixed else _random_tensor(name, shape, init_std(name), dtype, generator)


def write_random_text_encoder(
    config: UMT5Config,
    tokenizer_or_spiece_bytes: PreTrainedTokenizerBase | bytes | str | os.PathLike,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> Path:
    """Write a random-weight UMT5 encoder of any size as :func:`save_text_encoder_single_file` would.

    Same tensors, names and metadata as that writer (``shared.weight``, ``encoder.*``,
    ``spiece_model``); weights drawn per tensor with :func:`umt5_init_std`, RMS-norm scales
    ``1 + N(0, 0.05^2)``. Memory holds one tensor at a time (the 1 GB token embedding for
    UMT5-XXL), so ``umt5_xxl_config()`` writes ComfyUI's 11.4 GB ``umt5_xxl_fp16.safetensors``.

    Args:
        config: the encoder config (e.g. :func:`.text_encoder_loader.umt5_xxl_config`).
        tokenizer_or_spiece_bytes: the tokenizer to embed (see :func:`save_text_encoder_single_file`).
        path: output ``.safetensors`` file.
        dtype: storage dtype.
        seed: seed of the weights.
    """
    shapes = _meta_layout(UMT5EncoderModel, config)
    shapes.pop(TIED_EMBEDDING_KEY)
    spiece = _spiece_tensor(tokenizer_or_spiece_bytes)
    layout = {name: (dtype, shape) for name, shape in shapes.items()}
    layout[SPIECE_KEY] = (torch.uint8, tuple(spiece.shape))
    generator = torch.Generator().manual_seed(seed)
    tensors = _stream(layout, {SPIECE_KEY: spiece}, lambda name: umt5_init_std(name, config), generator)
    return _write_streamed(path, layout, tensors, TEXT_ENCODER_COMPONENT, config)


def write_random_clip_vision(
    config: CLIPVisionConfig, path: str | os.PathLike, *, dtype: torch.dtype = torch.float16, seed: int = 0
) -> Path:
    """Write a random-weight CLIP vision model (with ``visual_projection``) as ComfyUI's ``clip_vision_h``.

    Same names and metadata as :func:`save_clip_vision_single_file` of a
    ``CLIPVisionModelWithProjection``; weights drawn per tensor with :func:`clip_vision_init_std`,
    LayerNorm scales ``1 + N(0, 0.05^2)``, biases ``N(0, 0.02^2)``.

    Args:
        config: the vision config (e.g. :func:`.clip_vision_loader.clip_vision_h_config`).
        path: output ``.safetensors`` file.
        dtype: storage dtype.
        seed: seed of the weights.
    """
    shapes = _meta_layout(CLIPVisionModelWithProjection, config)
    layout = {_clip_file_name(name): (dtype, shape) for name, shape in shapes.items()}
    generator = torch.Generator().manual_seed(seed)
    tensors = _stream(layout, {}, lambda name: clip_vision_init_std(name, config), generator)
    return _write_streamed(path, layout, tensors, CLIP_VISION_COMPONENT, config)


def _write_streamed(
    path: str | os.PathLike,
    layout: TensorLayout,
    tensors: Iterator[tuple[str, torch.Tensor]],
    component: str,
    config: PretrainedConfig,
) -> Path:
    size = sum(math.prod(shape) * torch.empty((), dtype=dtype).element_size() for dtype, shape in layout.values())
    logger.info("writing random %s (%d tensors, %.2f GB) to %s", component, len(layout), size / 1e9, path)
    path = write_safetensors(path, layout, tensors, metadata=component_metadata(component, config.to_diff_dict()))
    logger.info("wrote %s", path)
    return path
