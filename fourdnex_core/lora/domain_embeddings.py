"""The two learnable domain embeddings that ship beside the 4DNeX LoRA.

4DNeX adds one vector of the model width to every RGB token and another to every XYZ token
(row 0: RGB, row 1: XYZ; shape [2, inner_dim], [2, 5120] for Wan2.1 14B). The release ships
them as ``learnable_domain_embeddings.pt``, a torch pickle holding the tensor (or a one-entry
dict). They are read with ``torch.load(weights_only=True)`` only, which refuses any pickle that
holds more than tensors and plain containers, and are assigned to the transformer's
``domain_embeddings`` parameter (see :mod:`fourdnex_core.transformer`).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

NUM_DOMAINS = 2
PARAMETER_NAME = "domain_embeddings"
_DICT_KEYS = ("learnable_domain_embeddings", "domain_embeddings")


def load_domain_embeddings(path: str | PathLike) -> torch.Tensor:
    """Read the [2, inner_dim] domain embeddings from a torch ``.pt`` file (tensors only).

    Accepts a tensor, or a dict holding it under ``learnable_domain_embeddings`` /
    ``domain_embeddings`` (any prefix) or as its only tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Domain embeddings file not found: {path}. It ships beside the LoRA as "
                                "learnable_domain_embeddings.pt.")
    corrupt = (f"{path} is not a readable torch file (truncated, corrupted or another format): download "
               "learnable_domain_embeddings.pt again, or pass the LoRA file made by `fourdnex convert-lora`, "
               "which carries the embeddings.")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):
            raise ValueError(corrupt) from error
        raise ValueError(
            f"{path.name} holds Python objects other than tensors, which are refused (unpickling them can run "
            f"code). Re-save just the tensor with torch.save(tensor, path). Details: {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, EOFError) as error:  # a zip archive cut short, or no archive at all
        raise ValueError(corrupt) from error
    return check_domain_embeddings(_unwrap(content, path.name))


def _unwrap(content: object, name: str) -> torch.Tensor:
    if isinstance(content, torch.Tensor):
        return content.detach()
    if isinstance(content, Mapping):
        named = [key for key in content if isinstance(key, str) and key.endswith(_DICT_KEYS)]
        tensors = [key for key, value in content.items() if isinstance(value, torch.Tensor)]
        chosen = named if len(named) == 1 else tensors
        if len(chosen) == 1 and isinstance(content[chosen[0]], torch.Tensor):
            return content[chosen[0]].detach()
        raise ValueError(f"{name}: a dict with keys {sorted(map(str, content))[:5]} but no single domain-embeddings "
                         f"tensor. Store it as a tensor or under the key '{_DICT_KEYS[0]}'.")
    raise ValueError(f"{name} holds a {type(content).__name__}, not a tensor. Save the [2, inner_dim] tensor with "
                     "torch.save(tensor, path).")


def check_domain_embeddings(embeddings: torch.Tensor, inner_dim: int | None = None) -> torch.Tensor:
    """Check ``embeddings`` is a finite float [2, inner_dim] tensor; return it."""
    if embeddings.ndim != 2 or embeddings.shape[0] != NUM_DOMAINS:
        raise ValueError(f"Domain embeddings must be [{NUM_DOMAINS}, inner_dim] (RGB, XYZ), got "
                         f"{list(embeddings.shape)}. Use the learnable_domain_embeddings.pt shipped with the LoRA.")
    if inner_dim is not None and embeddings.shape[1] != inner_dim:
        raise ValueError(f"Domain embeddings have width {embeddings.shape[1]} but the transformer's width is "
                         f"{inner_dim}. They belong to another model size (Wan2.1 14B: 5120, 1.3B: 1536); use the "
                         "embeddings released with this model's LoRA.")
    if not embeddings.is_floating_point() or not torch.isfinite(embeddings).all():
        raise ValueError("Domain embeddings must be finite floating-point values. The file is corrupt; "
                         "download it again.")
    return embeddings


@torch.no_grad()
def set_domain_embeddings(model: nn.Module, embeddings: torch.Tensor) -> None:
    """Copy ``embeddings`` [2, inner_dim] into ``model.domain_embeddings`` (its dtype and device kept)."""
    parameter = getattr(model, PARAMETER_NAME, None)
    if not isinstance(parameter, torch.Tensor):
        raise ValueError(f"{type(model).__name__} has no '{PARAMETER_NAME}' parameter. Load the embeddings into "
                         "FourDNeXTransformer3DModel (fourdnex_core.transformer), not a stock Wan transformer.")
    check_domain_embeddings(embeddings, inner_dim=parameter.shape[-1])
    parameter.copy_(embeddings)
    logger.debug("Set domain embeddings [%d, %d].", *embeddings.shape)
