"""Loading the CLIP ViT-H/14 image encoder and its image processor, offline.

- Diffusers: ``Wan2.1-I2V-14B-480P-Diffusers/image_encoder/`` (``CLIPVisionModel``) and
  ``image_processor/`` (``preprocessor_config.json``); pass the model root or ``image_encoder/``.
- ComfyUI single file: ``models/clip_vision/clip_vision_h.safetensors`` with transformers' names
  (``vision_model.embeddings.patch_embedding.weight``, ``vision_model.encoder.layers.N.*``,
  ``vision_model.pre_layrnorm``/``post_layernorm``, maybe ``visual_projection.weight``, which
  Wan does not use and is skipped). The model is recognised from this project's
  ``fourdnex_config`` metadata, else by its shapes, which must be ViT-H/14's
  (``configs/clip_vision_h.json``). The processor comes from ``configs/clip_image_processor.json``
  (224 px: bicubic resize of the shortest side, centre crop, CLIP mean/std), its size set to the
  model's ``image_size``.

The processor is transformers' PIL one (``CLIPImageProcessorPil``, what ``CLIPImageProcessor`` was
before transformers split it, so the release's processing): it needs no torchvision, and naming it
keeps transformers from warning, on every import, that torchvision is missing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import CLIPVisionConfig, CLIPVisionModel

try:  # transformers >= 5.x split the processor; the PIL one needs no torchvision
    from transformers import CLIPImageProcessorPil
except ImportError:  # before the split CLIPImageProcessor was the PIL one
    from transformers import CLIPImageProcessor as CLIPImageProcessorPil

from ..devices import dtype_named
from .detect import guess_contents, packaged_config
from .fp8 import is_fp8_dtype
from .locate import ModelSource, as_source
from .safetensors_io import (
    SafetensorsHeader,
    assign_state_dict,
    check_finite,
    iter_tensors,
    read_header,
    stored_config,
)

logger = logging.getLogger(__name__)

CLIP_VISION_COMPONENT = "clip_vision"
IMAGE_PROCESSOR_FOLDER = "image_processor"
CLIP_VISION_H_CONFIG_FILE = "clip_vision_h.json"
CLIP_IMAGE_PROCESSOR_CONFIG_FILE = "clip_image_processor.json"

FILE_PREFIX = "vision_model."
PROJECTION_KEY = "visual_projection.weight"
_PATCH_KEY = "vision_model.embeddings.patch_embedding.weight"
_POSITION_KEY = "vision_model.embeddings.position_embedding.weight"
_FC1_KEY = "vision_model.encoder.layers.0.mlp.fc1.weight"
# Tensors a CLIP vision file may carry that CLIPVisionModel does not use.
_UNUSED_SUFFIXES = ("position_ids",)
_UNUSED_KEYS = (PROJECTION_KEY,)


def clip_vision_h_config() -> CLIPVisionConfig:
    """The ViT-H/14 vision config Wan2.1 I2V uses (``configs/clip_vision_h.json``)."""
    return CLIPVisionConfig(**packaged_config(CLIP_VISION_H_CONFIG_FILE))


def clip_image_processor(image_size: int = 224) -> CLIPImageProcessorPil:
    """The CLIP processor of ``configs/clip_image_processor.json`` for ``image_size`` px inputs."""
    config = packaged_config(CLIP_IMAGE_PROCESSOR_CONFIG_FILE)
    config["size"] = {"shortest_edge": image_size}
    config["crop_size"] = {"height": image_size, "width": image_size}
    return CLIPImageProcessorPil.from_dict(config)


def load_clip_vision(
    source_or_path: ModelSource | str | os.PathLike,
    *,
    dtype: torch.dtype | str = torch.float16,
    device: torch.device | str = "cpu",
) -> tuple[CLIPVisionModel, CLIPImageProcessorPil]:
    """Load the CLIP vision encoder (eval mode) and its image processor.

    Args:
        source_or_path: a ``.safetensors`` file (``clip_vision_h.safetensors`` or this project's
            writer's), a diffusers ``image_encoder/`` folder, a diffusers model root, or a ComfyUI
            ``models/`` folder (see :func:`.locate.locate`).
        dtype: precision: bf16, fp16 or fp32 (a ``torch.dtype`` or its short name).
        device: where the weights go.

    Returns:
        ``(image_encoder, image_processor)``.

    Raises:
        ModelNotFoundError (a FileNotFoundError): nothing usable at the path.
        ValueError: unknown layout, another model, fp8 weights or an incomplete file.
    """
    dtype = dtype_named(dtype)
    source = as_source(source_or_path, CLIP_VISION_COMPONENT)
    if source.kind == "single_file":
        model = _load_single_file(source.path, dtype, torch.device(device))
        return model, clip_image_processor(model.config.image_size)
    model = _load_folder(source.path, dtype, torch.device(device))
    processor_dir = source.path.parent / IMAGE_PROCESSOR_FOLDER
    if (processor_dir / "preprocessor_config.json").is_file():
        return model, CLIPImageProcessorPil.from_pretrained(processor_dir, local_files_only=True)
    logger.info("no %s/ beside %s; using the standard CLIP processor", IMAGE_PROCESSOR_FOLDER, source.path)
    return model, clip_image_processor(model.config.image_size)


def _load_folder(folder: Path, dtype: torch.dtype, device: torch.device) -> CLIPVisionModel:
    """The diffusers component ``folder`` (``config.json`` + weights), with transformers' loader."""
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type not in ("clip_vision_model", "clip"):
        raise ValueError(
            f"{folder}/config.json describes a {model_type!r} model, not a CLIP vision encoder; "
            "pass the image_encoder/ folder of Wan2.1-I2V-14B-480P-Diffusers"
        )
    model = CLIPVisionModel.from_pretrained(folder, dtype=dtype, device_map={"": str(device)}, local_files_only=True)
    check_finite(model.state_dict(), folder)
    logger.info("loaded image encoder from %s (%s)", folder, dtype)
    return model.eval()


def clip_vision_config_from_header(header: SafetensorsHeader) -> CLIPVisionConfig:
    """The CLIP vision config of a single file: from its ``fourdnex_config`` metadata, else ViT-H/14 by shape.

    Raises:
        ValueError: the file holds another component, another CLIP size, or an unknown layout.
    """
    config = stored_config(header, CLIP_VISION_COMPONENT, "a CLIP vision encoder")
    if config is not None:
        return CLIPVisionConfig(**config)
    shapes = header.shapes
    if _PATCH_KEY not in shapes or _POSITION_KEY not in shapes or _FC1_KEY not in shapes:
        raise ValueError(
            f"unknown CLIP vision layout in {header.path}: it holds {guess_contents(shapes) or 'unrecognised tensors'} "
            f"(e.g. {sorted(shapes)[:3]}), not transformers CLIP names ('{_PATCH_KEY}', ...). "
            "Use ComfyUI's clip_vision_h.safetensors or the diffusers image_encoder/ folder"
        )
    config = clip_vision_h_config()
    num_layers = len({key.split(".")[3] for key in shapes if key.startswith("vision_model.encoder.layers.")})
    found = (shapes[_PATCH_KEY], shapes[_POSITION_KEY], num_layers, shapes[_FC1_KEY])
    num_positions = (config.image_size // config.patch_size) ** 2 + 1
    expected = (
        (config.hidden_size, config.num_channels, config.patch_size, config.patch_size),
        (num_positions, config.hidden_size),
        config.num_hidden_layers,
        (config.intermediate_size, config.hidden_size),
    )
    if found != expected:
        raise ValueError(
            f"{header.path} is a CLIP vision model but not ViT-H/14: (patch embedding, positions, layers, MLP) are "
            f"{found}, ViT-H/14 has {expected}. Wan2.1 I2V needs clip_vision_h.safetensors"
        )
    return config


def _model_name_mapper(model: CLIPVisionModel) -> Callable[[str], str]:
    """Maps file names (``vision_model.*``) to ``model``'s names.

    transformers 5 flattened ``CLIPVisionModel`` (``embeddings.*``, no ``vision_model.``); 4.x and
    every checkpoint keep the prefix.
    """
    if any(name.startswith(FILE_PREFIX) for name in model.state_dict()):
        return lambda name: name
    return lambda name: name.removeprefix(FILE_PREFIX)


def _load_single_file(path: Path, dtype: torch.dtype, device: torch.device) -> CLIPVisionModel:
    header = read_header(path)
    config = clip_vision_config_from_header(header)
    fp8 = [name for name, entry in header.entries.items() if is_fp8_dtype(entry.dtype)]
    if fp8:
        raise ValueError(
            f"{path} stores {fp8[0]!r} in {header.entries[fp8[0]].dtype}; fp8 CLIP vision files are not "
            "supported. Use the fp16 clip_vision_h.safetensors"
        )
    unused = [name for name in header.entries if name in _UNUSED_KEYS or name.endswith(_UNUSED_SUFFIXES)]
    if unused:
        logger.debug("not loading %s from %s: CLIPVisionModel does not use them", unused, path.name)
    with init_empty_weights(include_buffers=False):
        model = CLIPVisionModel(config)
    to_model_name = _model_name_mapper(model)
    weights = [entry for name, entry in header.entries.items() if name not in unused]
    state = {
        to_model_name(entry.name): tensor.to(device=device, dtype=dtype)
        for entry, tensor in iter_tensors(weights, description=f"Loading {path.name}")
    }
    assign_state_dict(model, state, source=path)
    logger.info("loaded image encoder from %s (%s)", path, dtype)
    return model.eval()
