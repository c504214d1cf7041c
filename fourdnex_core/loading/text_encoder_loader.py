"""Loading the UMT5-XXL text encoder and its tokenizer, offline, from the two layouts users have.

- Diffusers: ``Wan2.1-I2V-14B-480P-Diffusers/text_encoder/`` (``config.json`` + safetensors
  shards) and ``tokenizer/``; pass the model root or the ``text_encoder/`` folder.
- ComfyUI single file: ``models/text_encoders/umt5_xxl_fp16.safetensors`` or
  ``umt5_xxl_fp8_e4m3fn_scaled.safetensors``. Tensor names are transformers' ``UMT5EncoderModel``
  names, with these differences:

  - the token embedding is stored once, as ``shared.weight`` (or ``encoder.embed_tokens.weight``);
    the model ties the two;
  - ``spiece_model``: uint8 tensor holding the bytes of ``spiece.model`` (the tokenizer);
  - fp8-scaled files: Linear weights in float8_e4m3fn with a float32 ``<module>.scale_weight``,
    a top-level ``scaled_fp8`` marker, and possibly ``<module>.scale_input`` (unused here).

  The model is recognised from the ``fourdnex_config`` metadata this project writes, else from
  the tensor shapes, which must be those of UMT5-XXL (``configs/umt5_xxl_encoder.json``).

Weights are read tensor by tensor into a model built without weights (``assign``), so they exist
once in memory. fp8 Linear layers stay fp8 (:class:`.fp8.FP8Linear`, dequantized per call) except
the feed-forward output ``wo``: transformers' UMT5 casts its input to ``wo.weight.dtype``, which
must therefore be a compute dtype, so ``wo`` is dequantized at load time (fp32 when loading in
fp16, as transformers keeps ``wo`` in fp32 for fp16).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel

from ..devices import dtype_named
from .detect import IGNORED_SUFFIXES, SCALE_SUFFIX, SCALED_FP8_MARKER, guess_contents, packaged_config
from .fp8 import FP8Linear, dequantize_fp8, is_fp8_dtype, quantized_linear_from
from .locate import ModelSource, as_source, diffusers_weight_files
from .safetensors_io import (
    SafetensorsHeader,
    SafetensorsReader,
    TensorEntry,
    assign_state_dict,
    check_finite,
    iter_tensors,
    read_header,
    stored_config,
)
from .tokenizer import load_tokenizer, tokenizer_from_spiece_bytes

logger = logging.getLogger(__name__)

TEXT_ENCODER_COMPONENT = "text_encoder"
TOKENIZER_FOLDER = "tokenizer"
UMT5_XXL_CONFIG_FILE = "umt5_xxl_encoder.json"

EMBEDDING_KEY = "shared.weight"
TIED_EMBEDDING_KEY = "encoder.embed_tokens.weight"
SPIECE_KEY = "spiece_model"
SCALE_WEIGHT_SUFFIX = f".{SCALE_SUFFIX}"
_FIRST_QUERY_KEY = "encoder.block.0.layer.0.SelfAttention.q.weight"
_FP32_IN_FP16_MODULE = "DenseReluDense.wo"


def text_encoder_precision(name: str | torch.dtype, compute_device: torch.device | str,
                           source_or_path: ModelSource | str | os.PathLike) -> torch.dtype:
    """The precision ``name`` means for this text encoder: a named one (``bf16``, ``fp16``, ``fp32``
    or a dtype) as asked; ``"auto"`` bf16 on a GPU and, on the CPU, fp32 only for a file stored in
    fp32, else bf16: a 16-bit or fp8 file is never widened to fp32 unless asked (UMT5-XXL takes
    11 GB in bf16, 22.7 GB in fp32)."""
    if name != "auto":
        return dtype_named(name)
    if torch.device(compute_device).type != "cpu":
        return torch.bfloat16
    return torch.float32 if stored_precision(source_or_path) == torch.float32 else torch.bfloat16


def stored_precision(source_or_path: ModelSource | str | os.PathLike) -> torch.dtype | None:
    """The floating dtype holding most of a text encoder's bytes on disk (from the safetensors
    headers of the file or folder), or None when it holds no floating tensor."""
    source = as_source(source_or_path, TEXT_ENCODER_COMPONENT)
    files = ([source.path] if source.kind == "single_file"
             else diffusers_weight_files(source.path, TEXT_ENCODER_COMPONENT))
    totals: dict[torch.dtype, int] = {}
    for path in files:
        for entry in read_header(path).entries.values():
            if entry.dtype.is_floating_point:
                totals[entry.dtype] = totals.get(entry.dtype, 0) + entry.nbytes
    return max(totals, key=totals.__getitem__) if totals else None


def umt5_xxl_config() -> UMT5Config:
    """The UMT5-XXL encoder config Wan2.1 uses (``configs/umt5_xxl_encoder.json``)."""
    return UMT5Config(**packaged_config(UMT5_XXL_CONFIG_FILE))


def load_text_encoder(
    source_or_path: ModelSource | str | os.PathLike,
    *,
    tokenizer_path: str | os.PathLike | None = None,
    dtype: torch.dtype | str = torch.bfloat16,
    device: torch.device | str = "cpu",
) -> tuple[UMT5EncoderModel, PreTrainedTokenizerBase]:
    """Load the UMT5 encoder (eval mode) and its tokenizer.

    Args:
        source_or_path: a ``.safetensors`` file (ComfyUI's or this project's writer's), a diffusers
            ``text_encoder/`` folder, a diffusers model root, or a ComfyUI ``models/`` folder
            (see :func:`.locate.locate`).
        tokenizer_path: a tokenizer folder (``spiece.model`` and/or ``tokenizer.json``). For a file
            it is used only when the file embeds no ``spiece_model``; for a diffusers folder it
            replaces the sibling ``tokenizer/``.
        dtype: precision: bf16, fp16 or fp32 (a ``torch.dtype`` or its short name); see
            :func:`text_encoder_precision` for what ``"auto"`` means.
        device: where the weights go.

    Returns:
        ``(text_encoder, tokenizer)``.

    Raises:
        ModelNotFoundError (a FileNotFoundError): nothing usable at the path, or no tokenizer
            folder for a diffusers source.
        ValueError: unknown layout, another model, an incomplete file, or no tokenizer for a file.
    """
    dtype = dtype_named(dtype)
    source = as_source(source_or_path, TEXT_ENCODER_COMPONENT)
    if source.kind == "single_file":
        return _load_from_file(source.path, tokenizer_path, dtype, torch.device(device))
    return _load_from_folder(source.path, tokenizer_path, dtype, torch.device(device))


def _load_from_file(
    path: Path, tokenizer_path: str | os.PathLike | None, dtype: torch.dtype, device: torch.device
) -> tuple[UMT5EncoderModel, PreTrainedTokenizerBase]:
    header = read_header(path)
    config = text_encoder_config_from_header(header)
    if SPIECE_KEY not in header.entries and tokenizer_path is None:
        raise ValueError(
            f"{path} carries no tokenizer (no '{SPIECE_KEY}' tensor) and no tokenizer_path was given; pass "
            "tokenizer_path=<Wan2.1-I2V-14B-480P-Diffusers>/tokenizer (a folder with spiece.model or tokenizer.json)"
        )
    model, embedded = _load_single_file(header, config, dtype, device)
    if embedded is None:
        return model, load_tokenizer(tokenizer_path)
    if tokenizer_path is not None:
        logger.info("%s embeds its tokenizer; tokenizer_path %s is not used", path.name, tokenizer_path)
    return model, tokenizer_from_spiece_bytes(embedded)


def _load_from_folder(
    folder: Path, tokenizer_path: str | os.PathLike | None, dtype: torch.dtype, device: torch.device
) -> tuple[UMT5EncoderModel, PreTrainedTokenizerBase]:
    """The diffusers component ``folder`` (``config.json`` + weights), with transformers' loader."""
    _check_folder_config(folder)
    tokenizer_dir = Path(tokenizer_path) if tokenizer_path is not None else folder.parent / TOKENIZER_FOLDER
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(
            f"no tokenizer folder at {tokenizer_dir}; pass tokenizer_path=<Wan2.1-I2V-14B-480P-Diffusers>/tokenizer"
        )
    tokenizer = load_tokenizer(tokenizer_dir)
    model = UMT5EncoderModel.from_pretrained(folder, dtype=dtype, device_map={"": str(device)}, local_files_only=True)
    check_finite(model.state_dict(), folder)
    logger.info("loaded text encoder from %s (%s)", folder, dtype)
    return model.eval(), tokenizer


def _check_folder_config(folder: Path) -> None:
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != "umt5":
        raise ValueError(
            f"{folder}/config.json describes a {model_type!r} model, not the UMT5 text encoder; "
            "pass the text_encoder/ folder of Wan2.1-I2V-14B-480P-Diffusers"
        )


def text_encoder_config_from_header(header: SafetensorsHeader) -> UMT5Config:
    """The UMT5 config of a single file: from its ``fourdnex_config`` metadata, else UMT5-XXL by shape.

    Raises:
        ValueError: the file holds another component, or a layout that is not UMT5-XXL.
    """
    config = stored_config(header, TEXT_ENCODER_COMPONENT, "a text encoder")
    if config is not None:
        return UMT5Config(**config)
    shapes = header.shapes
    if not any(key.startswith("vision_model.") for key in shapes):
        embedding = shapes.get(EMBEDDING_KEY, shapes.get(TIED_EMBEDDING_KEY))
        if embedding is not None and _FIRST_QUERY_KEY in shapes:
            config = umt5_xxl_config()
            _check_umt5_xxl_shapes(header, config, embedding)
            return config
    raise ValueError(
        f"unknown text-encoder layout in {header.path}: it holds {guess_contents(shapes) or 'unrecognised tensors'} "
        f"(e.g. {sorted(shapes)[:3]}), not transformers UMT5 names ('{EMBEDDING_KEY}', '{_FIRST_QUERY_KEY}', ...). "
        "Use ComfyUI's umt5_xxl_fp16.safetensors / umt5_xxl_fp8_e4m3fn_scaled.safetensors or the diffusers "
        "text_encoder/ folder"
    )


def _check_umt5_xxl_shapes(header: SafetensorsHeader, config: UMT5Config, embedding: tuple[int, ...]) -> None:
    shapes = header.shapes
    num_layers = len({key.split(".")[2] for key in shapes if key.startswith("encoder.block.")})
    bias = shapes.get("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight")
    found = (embedding, num_layers, shapes.get("encoder.block.0.layer.1.DenseReluDense.wi_0.weight"), bias)
    expected = (
        (config.vocab_size, config.d_model),
        config.num_layers,
        (config.d_ff, config.d_model),
        (config.relative_attention_num_buckets, config.num_heads),
    )
    if found != expected:
        raise ValueError(
            f"{header.path} is a T5-family encoder but not UMT5-XXL: (embedding, layers, feed-forward, "
            f"block-1 position bias) are {found}, UMT5-XXL has {expected}. Wan2.1 needs umt5_xxl "
            "(not t5xxl, whose vocabulary is 32128 and which has a position bias in block 0 only)"
        )


def _load_single_file(
    header: SafetensorsHeader, config: UMT5Config, dtype: torch.dtype, device: torch.device
) -> tuple[UMT5EncoderModel, bytes | None]:
    """The encoder in the file of ``header`` on ``device``, and its embedded ``spiece.model`` bytes (or None)."""
    path = header.path
    with init_empty_weights(include_buffers=False):
        model = UMT5EncoderModel(config)
    entries = header.entries
    with SafetensorsReader() as reader:
        spiece = reader.read(entries[SPIECE_KEY]).numpy().tobytes() if SPIECE_KEY in entries else None
        scales = {
            name.removesuffix(SCALE_WEIGHT_SUFFIX): reader.read(entry).to(device)
            for name, entry in entries.items()
            if name.endswith(SCALE_WEIGHT_SUFFIX)
        }
    weights = [entry for name, entry in entries.items() if _is_model_tensor(name, entries)]
    state: dict[str, torch.Tensor] = {}
    for entry, tensor in iter_tensors(weights, description=f"Loading {path.name}"):
        scale = scales.get(entry.name.removesuffix(".weight"))
        state.update(_model_tensors(model, entry.name, tensor.to(device), scale, dtype))
    _tie_embeddings(state, path)
    assign_state_dict(model, state, source=path)
    model.tie_weights()
    num_fp8 = sum(isinstance(module, FP8Linear) for module in model.modules())
    logger.info("loaded text encoder from %s (%s, %d fp8 layers)", path, dtype, num_fp8)
    return model.eval(), spiece


def _is_model_tensor(name: str, entries: Mapping[str, TensorEntry]) -> bool:
    """False for the tokenizer, the fp8 marker and scales, and a second copy of the tied embedding."""
    if name in (SPIECE_KEY, SCALED_FP8_MARKER) or name.endswith(SCALE_WEIGHT_SUFFIX):
        return False
    if name.rpartition(".")[2] in IGNORED_SUFFIXES:
        return False
    return not (name == TIED_EMBEDDING_KEY and EMBEDDING_KEY in entries)


def _model_tensors(
    model: UMT5EncoderModel, name: str, tensor: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The model tensors for the file tensor ``name``, converted to ``dtype``.

    An fp8 Linear weight stays fp8: its module in ``model`` is replaced by an :class:`.fp8.FP8Linear`
    computing in ``dtype``, and its weight and scale are returned under the module's names.
    """
    if not is_fp8_dtype(tensor.dtype):
        return {name: tensor.to(_storage_dtype(name, dtype))}
    if not _keeps_fp8(model, name):
        return {name: dequantize_fp8(tensor, scale, _storage_dtype(name, dtype))}
    module_name = name.removesuffix(".weight")
    fp8_linear = quantized_linear_from(model.get_submodule(module_name), tensor, scale, dtype)
    _replace_module(model, module_name, fp8_linear)
    return {f"{module_name}.{key}": value for key, value in fp8_linear.state_dict().items()}


def _keeps_fp8(model: nn.Module, name: str) -> bool:
    """Whether the fp8 tensor ``name`` can stay fp8: a Linear weight other than UMT5's ``wo``."""
    module_name = name.removesuffix(".weight")
    if not name.endswith(".weight") or module_name.endswith(_FP32_IN_FP16_MODULE):
        return False
    try:
        return isinstance(model.get_submodule(module_name), nn.Linear)
    except AttributeError:
        return False


def _storage_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """``dtype``, except fp32 for the ``wo`` weights in fp16 (as transformers' from_pretrained does)."""
    if dtype == torch.float16 and name.endswith(_FP32_IN_FP16_MODULE + ".weight"):
        return torch.float32
    return dtype


def _tie_embeddings(state: dict[str, torch.Tensor], path: Path) -> None:
    """Give ``shared`` and ``encoder.embed_tokens`` the one embedding the file stores."""
    embedding = state.get(EMBEDDING_KEY, state.get(TIED_EMBEDDING_KEY))
    if embedding is None:
        raise ValueError(
            f"{path} has no token embedding ('{EMBEDDING_KEY}'); the file is incomplete, download it again"
        )
    state[EMBEDDING_KEY] = embedding
    state[TIED_EMBEDDING_KEY] = embedding


def _replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)
