"""Load the Wan2.1 I2V transformer from a diffusers folder or a ComfyUI single file, offline.

The model is built on the meta device (no weight memory), then each tensor is read from disk,
renamed to diffusers' names, converted and handed over with ``load_state_dict(assign=True)``:
the weights exist once in memory, plus one tensor in flight.

Precision:

- ``dtype`` (bf16, fp16 or fp32) is the dtype of the weights and of the computation. As in
  diffusers, the modules in ``model_cls._keep_in_fp32_modules`` (norms, time embedder,
  modulation tables) stay float32 when ``dtype`` is 16-bit.
- fp8 files: the Linear layers of the transformer blocks keep their fp8 weights
  (:class:`~fourdnex_core.loading.fp8.FP8Linear`, dequantized per layer inside ``forward``;
  ``keep_fp8=False`` upcasts them at load instead). Every other fp8 tensor is dequantized
  (times its ``scale_weight``) to its dtype at load.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch
from diffusers import ModelMixin, WanTransformer3DModel
from torch import nn

from fourdnex_core.loading.detect import (
    SCALE_SUFFIX,
    TransformerCheckpoint,
    inspect_transformer,
    transformer_name_to_diffusers,
)
from fourdnex_core.loading.fp8 import FP8Linear, dequantize_fp8, is_fp8_dtype
from fourdnex_core.loading.locate import ModelSource, as_source
from fourdnex_core.loading.safetensors_io import (
    TensorEntry,
    assign_state_dict,
    build_empty_model,
    iter_tensors,
    merge_headers,
)

logger = logging.getLogger(__name__)

# Parameters 4DNeX adds to Wan that Wan checkpoints do not hold; left as zeros when missing.
OPTIONAL_PARAMETERS = ("domain_embeddings",)
_LOAD_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class _TensorPlan:
    """Where one model tensor comes from: ``entry``, times ``scale`` if it is scaled fp8."""

    target: str
    entry: TensorEntry
    scale: TensorEntry | None


def load_transformer(
    source_or_path: ModelSource | str | os.PathLike[str],
    *,
    model_cls: type[ModelMixin] | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    keep_fp8: bool = True,
) -> ModelMixin:
    """Load a Wan2.1 I2V transformer (any layout :mod:`~fourdnex_core.loading.locate` accepts).

    Args:
        source_or_path: a :class:`ModelSource`, or a diffusers folder, ComfyUI models folder or
            ``.safetensors`` file.
        model_cls: the class to build, a ``WanTransformer3DModel`` subclass (default
            ``WanTransformer3DModel``; 4DNeX passes ``FourDNeXTransformer3DModel``). Its
            ``domain_embeddings``, absent from Wan checkpoints, start as zeros.
        dtype: weight and compute dtype: ``torch.bfloat16``, ``torch.float16`` or ``torch.float32``.
        device: where the weights go, tensor by tensor.
        keep_fp8: keep fp8 block Linear weights in fp8 (see module docs).

    Returns:
        The model in eval mode.

    Raises:
        ModelNotFoundError, CorruptSafetensorsError, UnsupportedModelError: missing, damaged
            or wrong files; ValueError: tensors that do not fit the model.
    """
    if dtype not in _LOAD_DTYPES:
        raise ValueError(f"dtype must be one of {_LOAD_DTYPES}, got {dtype}.")
    started = time.perf_counter()
    checkpoint = inspect_transformer(as_source(source_or_path, "transformer"))
    model = build_empty_model(model_cls or WanTransformer3DModel, checkpoint.config)
    plans = _plan_tensors(checkpoint)
    fp8_layers = _fp8_block_linears(model, plans) if keep_fp8 else set()
    _install_fp8_layers(model, fp8_layers, plans, dtype)
    keep_fp32 = tuple(getattr(model, "_keep_in_fp32_modules", None) or ()) if dtype != torch.float32 else ()
    device = torch.device(device)
    description = f"Loading {checkpoint.source.path.name}"
    state_dict = _read_state_dict(plans, fp8_layers, dtype, keep_fp32, device, description)
    for name, shape in _missing_optional(model, state_dict).items():
        state_dict[name] = torch.zeros(shape, dtype=_target_dtype(name, dtype, keep_fp32), device=device)
        logger.info("%s is not in %s; it starts as zeros.", name, checkpoint.source.path.name)
    assign_state_dict(model, state_dict, source=checkpoint.source.path)
    model.to(device).eval()
    logger.info(
        "Loaded %s transformer from %s (%s names, fp8: %s, %d fp8 layers) as %s on %s in %.1f s.",
        checkpoint.variant or "custom",
        checkpoint.source.path,
        checkpoint.key_style,
        checkpoint.fp8,
        len(fp8_layers),
        dtype,
        device,
        time.perf_counter() - started,
    )
    return model


def _plan_tensors(checkpoint: TransformerCheckpoint) -> dict[str, _TensorPlan]:
    """``{diffusers parameter name: plan}``, pairing fp8 weights with their ``scale_weight``."""
    scales: dict[str, TensorEntry] = {}
    weights: dict[str, TensorEntry] = {}
    for name, entry in merge_headers(checkpoint.headers).items():
        target = transformer_name_to_diffusers(name, checkpoint.key_style)
        if target is None:
            continue
        module, _, leaf = target.rpartition(".")
        found = scales if leaf == SCALE_SUFFIX else weights
        key = module if leaf == SCALE_SUFFIX else target
        if key in found:
            raise ValueError(
                f"{entry.path}: tensors {found[key].name!r} and {name!r} are both {target!r}; "
                "the file mixes two copies of the model. Download the original file again."
            )
        found[key] = entry
    plans = {}
    for target, entry in weights.items():
        module, _, leaf = target.rpartition(".")
        scaled = leaf == "weight" and is_fp8_dtype(entry.dtype)
        plans[target] = _TensorPlan(target, entry, scales.get(module) if scaled else None)
    return plans


def _fp8_block_linears(model: nn.Module, plans: Mapping[str, _TensorPlan]) -> set[str]:
    """Names of the Linear layers inside ``blocks`` whose weights the file stores in fp8."""
    return {
        name
        for name, module in model.named_modules()
        if name.startswith("blocks.")
        and isinstance(module, nn.Linear)
        and f"{name}.weight" in plans
        and is_fp8_dtype(plans[f"{name}.weight"].entry.dtype)
    }


def _install_fp8_layers(
    model: nn.Module, names: Collection[str], plans: Mapping[str, _TensorPlan], dtype: torch.dtype
) -> None:
    """Replace the meta Linear layers in ``names`` with meta :class:`FP8Linear` placeholders."""
    for name in names:
        linear = model.get_submodule(name)
        plan = plans[f"{name}.weight"]
        model.set_submodule(
            name,
            FP8Linear(
                linear.in_features,
                linear.out_features,
                bias=linear.bias is not None,
                fp8_dtype=plan.entry.dtype,
                scaled=plan.scale is not None,
                compute_dtype=dtype,
                device="meta",
            ),
        )


def _read_state_dict(
    plans: Mapping[str, _TensorPlan],
    fp8_layers: Collection[str],
    dtype: torch.dtype,
    keep_fp32: tuple[str, ...],
    device: torch.device,
    description: str,
) -> dict[str, torch.Tensor]:
    """Read every planned tensor, converted to its final dtype and device (one at a time)."""
    scale_entries = {plan.scale for plan in plans.values() if plan.scale is not None}
    scales = {}
    if scale_entries:
        scales = {entry: _scale_value(entry, t) for entry, t in iter_tensors(scale_entries, description="fp8 scales")}
    by_entry = {plan.entry: plan for plan in plans.values()}
    final_dtypes = {plan.entry: _final_dtype(plan, fp8_layers, dtype, keep_fp32) for plan in plans.values()}

    def staged(entry: TensorEntry) -> bool:
        """Read into the staging buffer when the dtype conversion or device move below copies anyway."""
        return device.type != "cpu" or final_dtypes[entry] != entry.dtype

    state_dict: dict[str, torch.Tensor] = {}
    for entry, tensor in iter_tensors(by_entry, description=description, staged=staged):
        plan, final_dtype = by_entry[entry], final_dtypes[entry]
        scale = scales.get(plan.scale) if plan.scale is not None else None
        if is_fp8_dtype(final_dtype) and scale is not None:
            state_dict[f"{plan.target.rpartition('.')[0]}.{SCALE_SUFFIX}"] = scale.to(device)
        if is_fp8_dtype(tensor.dtype) and final_dtype != tensor.dtype:
            tensor = dequantize_fp8(tensor, scale, final_dtype)
        state_dict[plan.target] = tensor.to(device, final_dtype)
    return state_dict


def _missing_optional(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Size]:
    """``{name: shape}`` of the :data:`OPTIONAL_PARAMETERS` the model has and the file lacks."""
    placeholders = model.state_dict()
    return {
        name: placeholders[name].shape
        for name in OPTIONAL_PARAMETERS
        if name in placeholders and name not in state_dict
    }


def _final_dtype(
    plan: _TensorPlan, fp8_layers: Collection[str], dtype: torch.dtype, keep_fp32: tuple[str, ...]
) -> torch.dtype:
    """The dtype a tensor ends up in: fp8 kept for fp8 block Linears, else ``dtype`` (or fp32)."""
    module, _, leaf = plan.target.rpartition(".")
    if (module in fp8_layers and leaf == "weight") or not plan.entry.dtype.is_floating_point:
        return plan.entry.dtype
    return _target_dtype(plan.target, dtype, keep_fp32)


def _scale_value(entry: TensorEntry, tensor: torch.Tensor) -> torch.Tensor:
    """A ``scale_weight`` tensor as a float32 scalar; it must hold exactly one value."""
    if tensor.numel() != 1:
        raise ValueError(
            f"{entry.path}: {entry.name} has shape {list(tensor.shape)}; per-tensor fp8 scales hold one value. "
            "Only ComfyUI's per-tensor fp8_scaled format is supported: use the bf16, fp16 or fp8_scaled file."
        )
    return tensor.reshape(()).to(torch.float32)


def _target_dtype(name: str, dtype: torch.dtype, keep_fp32: tuple[str, ...]) -> torch.dtype:
    """float32 for parameters of ``_keep_in_fp32_modules`` (matched per dotted name part, as diffusers does)."""
    return torch.float32 if any(part in keep_fp32 for part in name.split(".")) else dtype
