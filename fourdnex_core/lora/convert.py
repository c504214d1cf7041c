"""Our single-file 4DNeX LoRA: the LoRA with its alpha, plus the domain embeddings.

The release ships two files (``pytorch_lora_weights.safetensors`` without alpha, and the pickled
``learnable_domain_embeddings.pt``). :func:`convert_release_lora` writes them as one
``.safetensors`` file that needs no convention to read:

========================================  ==============  =====================================
key                                       shape           meaning
========================================  ==============  =====================================
``transformer.<module>.lora_A.weight``    [r, in]         down factor (diffusers module names)
``transformer.<module>.lora_B.weight``    [out, r]        up factor
``transformer.<module>.alpha``            [] float32      alpha; the update is alpha / r * B @ A
``fourdnex.domain_embeddings``            [2, inner_dim]  domain embeddings (row 0 RGB, 1 XYZ)
========================================  ==============  =====================================

Metadata: ``{"format": "fourdnex-lora", "rank": "64", "alpha": "32"}`` (``"mixed"`` when modules
differ; informative only, the per-module ``.alpha`` is authoritative). Read it back with
:func:`fourdnex_core.lora.formats.read_lora`.

:func:`to_comfyui_state_dict` writes the same layers the way ComfyUI's own LoRA loader reads a
Wan LoRA (``diffusion_model.blocks.0.self_attn.q.lora_down.weight`` / ``.lora_up.weight`` /
``.alpha``, original Wan module names): ComfyUI 0.3.64 maps none of the release's diffusers names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import torch

from fourdnex_core.loading.safetensors_io import save_tensors
from fourdnex_core.loading.wan_keys import diffusers_to_original
from fourdnex_core.lora.domain_embeddings import check_domain_embeddings, load_domain_embeddings
from fourdnex_core.lora.formats import (
    DOMAIN_EMBEDDINGS_KEY,
    FOURDNEX_FORMAT,
    LoraFile,
    LoraFormat,
    LoraLayer,
    read_lora,
)

logger = logging.getLogger(__name__)

_PREFIX = "transformer."
_COMFYUI_PREFIX = "diffusion_model."
_SELF_ATTENTION_QUERY = re.compile(r"^blocks\.\d+\.attn1\.to_q$")


def to_fourdnex_state_dict(
    layers: Sequence[LoraLayer],
    domain_embeddings: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of our single-file format (see the module docstring); pure."""
    if not layers:
        raise ValueError("No LoRA layers to write. Read a LoRA file first (read_lora(...).layers).")
    state_dict: dict[str, torch.Tensor] = {}
    for layer in layers:
        base = f"{_PREFIX}{layer.module}"
        state_dict[f"{base}.lora_A.weight"] = layer.down.contiguous()
        state_dict[f"{base}.lora_B.weight"] = layer.up.contiguous()
        state_dict[f"{base}.alpha"] = torch.tensor(layer.alpha, dtype=torch.float32)
    if domain_embeddings is not None:
        check_domain_embeddings(domain_embeddings)
        _check_same_width(layers, domain_embeddings)
        state_dict[DOMAIN_EMBEDDINGS_KEY] = domain_embeddings.detach().contiguous()
    metadata = {
        "format": FOURDNEX_FORMAT,
        "rank": _summary(layer.rank for layer in layers),
        "alpha": _summary(layer.alpha for layer in layers),
    }
    return state_dict, metadata


def to_comfyui_state_dict(layers: Sequence[LoraLayer]) -> dict[str, torch.Tensor]:
    """The LoRA in the layout ComfyUI's LoRA loader reads for Wan; pure, reads back with ``parse_lora_state_dict``.

    Keys per layer (original Wan module ``<m>``, e.g. ``blocks.0.self_attn.q``):
    ``diffusion_model.<m>.lora_down.weight`` [r, in], ``.lora_up.weight`` [out, r] and
    ``.alpha`` [] float32, so that ComfyUI's update at strength s is
    ``s * alpha / r * up @ down``, the same meaning of strength as ours.
    """
    if not layers:
        raise ValueError("No LoRA layers to convert. Read a LoRA file first (read_lora(...).layers).")
    state_dict: dict[str, torch.Tensor] = {}
    for layer in layers:
        original = diffusers_to_original(layer.module)
        if original is None:
            raise ValueError(f"LoRA module {layer.module!r} has no name in the original Wan layout, so ComfyUI's "
                             "model cannot take it. Only LoRAs on the Wan transformer's Linear layers convert.")
        base = f"{_COMFYUI_PREFIX}{original}"
        state_dict[f"{base}.lora_down.weight"] = layer.down.contiguous()
        state_dict[f"{base}.lora_up.weight"] = layer.up.contiguous()
        state_dict[f"{base}.alpha"] = torch.tensor(layer.alpha, dtype=torch.float32)
    return state_dict


def _summary(values) -> str:
    distinct = set(values)
    return f"{distinct.pop():g}" if len(distinct) == 1 else "mixed"


def _check_same_width(layers: Sequence[LoraLayer], domain_embeddings: torch.Tensor) -> None:
    """The self-attention queries' input width is the model width, as is the embeddings' width."""
    widths = {layer.down.shape[1] for layer in layers if _SELF_ATTENTION_QUERY.match(layer.module)}
    if widths and widths != {domain_embeddings.shape[1]}:
        raise ValueError(f"The LoRA is for model width {sorted(widths)} but the domain embeddings have width "
                         f"{domain_embeddings.shape[1]}. Use the two files released together.")


def write_fourdnex_lora(
    path: str | PathLike,
    layers: Sequence[LoraLayer],
    domain_embeddings: torch.Tensor | None = None,
) -> Path:
    """Write ``layers`` (and the [2, inner_dim] ``domain_embeddings``) in our single-file format."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path.name}: the output must be a .safetensors file. Name it e.g. 4dnex_lora.safetensors.")
    state_dict, metadata = to_fourdnex_state_dict(layers, domain_embeddings)
    save_tensors(path, state_dict, metadata)
    logger.info("Wrote %d LoRA layers (rank %s, alpha %s) to %s.",
                len(layers), metadata["rank"], metadata["alpha"], path)
    return path


def convert_release_lora(
    lora_path: str | PathLike,
    domain_embeddings_path: str | PathLike,
    out_path: str | PathLike,
    *,
    alpha_over_rank_if_missing: float | None = None,
    overwrite: bool = False,
) -> LoraFile:
    """Write the released LoRA and ``learnable_domain_embeddings.pt`` as one file; return its content.

    The LoRA may be in any format whose names resolve without the model (diffusers, ComfyUI,
    ours without embeddings); alpha follows the rules of :func:`read_lora`, so the released
    diffusers file gets alpha = 0.5 * rank and reads back identically at every strength.
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise ValueError(f"{out_path} already exists. Choose another output path or allow overwriting.")
    lora = read_lora(lora_path, alpha_over_rank_if_missing=alpha_over_rank_if_missing)
    if lora.domain_embeddings is not None:
        raise ValueError(f"{Path(lora_path).name} already carries domain embeddings; it needs no conversion.")
    domain_embeddings = load_domain_embeddings(domain_embeddings_path)
    write_fourdnex_lora(out_path, lora.layers, domain_embeddings)
    return LoraFile(format=LoraFormat.FOURDNEX, layers=lora.layers, domain_embeddings=domain_embeddings)
