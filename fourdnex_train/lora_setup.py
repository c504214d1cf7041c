"""The trainable part of the 4DNeX transformer: a peft LoRA plus the domain embeddings.

:func:`add_lora` freezes the transformer, injects a peft LoRA (``lora_alpha`` / ``r`` is the
training scale) on the Linear layers whose names end with ``target_modules`` and makes the
``domain_embeddings`` [2, inner_dim] trainable. Trainable tensors stay float32 whatever the base
weights' dtype, so where the frozen weights live (GPU, fp8, swapped blocks) does not change the
training step.

Export: :func:`trained_lora_layers` turns the peft modules into
:class:`fourdnex_core.lora.LoraLayer` objects (down = lora_A, up = lora_B, alpha = lora_alpha),
so ``alpha / r * up @ down`` is exactly the update peft applied in training;
:func:`write_trained_lora` writes our single-file format (LoRA with alpha + domain embeddings +
training metadata) and :func:`write_diffusers_lora` the released two-file layout.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import peft
import torch
from peft.tuners.lora import LoraLayer as PeftLoraLayer
from torch import nn

from fourdnex_core.atomic_write import atomic_path
from fourdnex_core.loading.safetensors_io import save_tensors
from fourdnex_core.lora import LoraLayer, to_fourdnex_state_dict
from fourdnex_core.model_set import RELEASED_DOMAIN_EMBEDDINGS_FILE, RELEASED_LORA_FILE

logger = logging.getLogger(__name__)

ADAPTER = "default"
DOMAIN_EMBEDDINGS = "domain_embeddings"


def add_lora(
    transformer: nn.Module,
    *,
    rank: int,
    alpha: float,
    target_modules: list[str],
    train_domain_embeddings: bool = True,
) -> list[nn.Parameter]:
    """Freeze ``transformer``, add the LoRA, return the trainable parameters (all float32)."""
    if not hasattr(transformer, DOMAIN_EMBEDDINGS):
        raise ValueError(f"{type(transformer).__name__} has no domain embeddings; train a "
                         "fourdnex_core.transformer.FourDNeXTransformer3DModel.")
    transformer.requires_grad_(False)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0,
                             init_lora_weights=True)
    try:
        transformer.add_adapter(config, adapter_name=ADAPTER)
    except ValueError as error:
        raise ValueError(f"[lora] target_modules {target_modules} match no Linear layer of the transformer "
                         f"({error}). Use name suffixes such as to_q, to_k, to_v, to_out.0, ffn.net.0.proj.") from error
    trainable = [module for module in transformer.modules() if isinstance(module, PeftLoraLayer)]
    _check_linear_only(transformer, target_modules)
    logger.info("LoRA r=%d alpha=%g on %d Linear layers.", rank, alpha, len(trainable))
    transformer.domain_embeddings.requires_grad_(train_domain_embeddings)
    parameters = [parameter for parameter in transformer.parameters() if parameter.requires_grad]
    for parameter in parameters:
        parameter.data = parameter.data.float()
    return parameters


def _check_linear_only(transformer: nn.Module, target_modules: list[str]) -> None:
    """The 4DNeX LoRA format (and every reader of it) holds Linear layers only: refuse the others."""
    others = [f"{name} ({type(module.get_base_layer()).__name__})" for name, module in transformer.named_modules()
              if isinstance(module, PeftLoraLayer) and not isinstance(module.get_base_layer(), nn.Linear)]
    if others:
        raise ValueError(f"[lora] target_modules {target_modules} match layers that are not Linear: "
                         f"{', '.join(others[:3])}. The 4DNeX LoRA format holds Linear layers only; drop those "
                         "names (e.g. patch_embedding) from target_modules.")


def trainable_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor training changes: the LoRA factors and the domain embeddings (CPU copies)."""
    state = {name: tensor.detach().cpu().clone() for name, tensor in transformer.state_dict().items()
             if ".lora_A." in name or ".lora_B." in name}
    state[DOMAIN_EMBEDDINGS] = transformer.domain_embeddings.detach().cpu().clone()
    return state


@torch.no_grad()
def load_trainable_state_dict(transformer: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a :func:`trainable_state_dict` back into ``transformer`` (names and shapes must match)."""
    own = dict(transformer.named_parameters())
    mismatched = [name for name in state if name not in own or own[name].shape != state[name].shape]
    expected = set(trainable_state_dict(transformer))
    missing = sorted(expected - set(state))
    if mismatched or missing:
        raise ValueError(f"The checkpoint does not fit this LoRA (mismatched {mismatched[:3]}, missing {missing[:3]}). "
                         "It was written with other [lora] settings; use the same rank and target_modules, or "
                         "start a new output_dir.")
    for name, tensor in state.items():
        own[name].copy_(tensor)


def trained_lora_layers(transformer: nn.Module) -> list[LoraLayer]:
    """The peft LoRA as :class:`LoraLayer` objects (diffusers module paths, alpha = lora_alpha)."""
    layers = []
    for name, module in transformer.named_modules():
        if isinstance(module, PeftLoraLayer) and ADAPTER in module.lora_A:
            layers.append(LoraLayer(
                module=name,
                down=module.lora_A[ADAPTER].weight.detach().float().cpu().clone(),
                up=module.lora_B[ADAPTER].weight.detach().float().cpu().clone(),
                alpha=float(module.lora_alpha[ADAPTER]),
            ))
    if not layers:
        raise ValueError("The transformer carries no trained LoRA; call add_lora first.")
    return layers


def write_trained_lora(path: Path, transformer: nn.Module, metadata: Mapping[str, str]) -> Path:
    """Our single-file LoRA (``fourdnex_core.lora.convert`` format) plus training metadata, atomically."""
    if path.suffix != ".safetensors":
        raise ValueError(f"{path.name}: the LoRA output must be a .safetensors file; set [train] output_name "
                         "without an extension.")
    tensors, format_metadata = to_fourdnex_state_dict(trained_lora_layers(transformer),
                                                      transformer.domain_embeddings.detach().float().cpu())
    _check_finite(tensors, path)
    return save_tensors(path, tensors, {**metadata, **format_metadata})


def _check_finite(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse to write a LoRA holding NaN or infinite values (naming the first tensors)."""
    broken = [name for name, tensor in tensors.items() if not torch.isfinite(tensor).all()]
    if broken:
        raise ValueError(f"Not writing {path}: {len(broken)} of its tensors hold NaN or infinite values "
                         f"({', '.join(broken[:3])}). Training diverged; lower [optim] lr and train again.")


def write_diffusers_lora(folder: Path, transformer: nn.Module, *, rank: int, alpha: float,
                         target_modules: list[str]) -> Path:
    """The released layout: ``pytorch_lora_weights.safetensors`` (with peft's ``lora_adapter_metadata``
    so the alpha is known) and ``learnable_domain_embeddings.pt``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer in trained_lora_layers(transformer):
        tensors[f"transformer.{layer.module}.lora_A.weight"] = layer.down.contiguous()
        tensors[f"transformer.{layer.module}.lora_B.weight"] = layer.up.contiguous()
    domain_embeddings = transformer.domain_embeddings.detach().float().cpu().clone()
    _check_finite({**tensors, DOMAIN_EMBEDDINGS: domain_embeddings}, folder)
    adapter = {"r": rank, "lora_alpha": alpha, "target_modules": list(target_modules)}
    save_tensors(folder / RELEASED_LORA_FILE, tensors, {"lora_adapter_metadata": json.dumps(adapter)})
    with atomic_path(folder / RELEASED_DOMAIN_EMBEDDINGS_FILE) as temporary:
        torch.save(domain_embeddings, temporary)
    return folder
