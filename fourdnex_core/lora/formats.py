"""LoRA files for the Wan / 4DNeX transformer: every supported format, read into one form.

Whatever the file, a LoRA becomes a list of :class:`LoraLayer`: for one ``nn.Linear`` of the
transformer (named by its diffusers module path, ``blocks.0.attn1.to_q``), the factors
``down`` [r, in] and ``up`` [out, r] and the scalar ``alpha``. Applied at ``strength`` it changes
the weight [out, in] by::

    delta_W = strength * alpha / r * up @ down

so **strength 1.0 is the LoRA's own training scale** ``alpha / r``.

Formats (keys for one module ``<m>``):

* **diffusers** (the 4DNeX release): ``transformer.<m>.lora_A.weight`` / ``.lora_B.weight``, with
  diffusers module names (original Wan names are accepted too).
* **comfyui**: ``diffusion_model.<m>.lora_A.weight`` / ``.lora_B.weight`` or ``.lora_down.weight`` /
  ``.lora_up.weight``, with original Wan names (``blocks.0.self_attn.q``); the prefix may also be
  ``model.diffusion_model.`` or absent.
* **kohya**: ``lora_unet_<m with '.' -> '_'>.lora_down.weight`` / ``.lora_up.weight``; the
  flattened names are resolved against the target model's Linear names.
* **fourdnex**: our single file (:mod:`.convert`): diffusers keys, ``<m>.alpha`` for every module
  and the domain embeddings.

Any format may store ``<m>.alpha`` (a scalar); diffusers files may instead carry peft's
``lora_adapter_metadata`` JSON (``lora_alpha``, ``alpha_pattern``), which is honoured as diffusers
does.

**Files without alpha.** ComfyUI and kohya files without ``.alpha`` mean alpha = rank (scale 1),
the convention of those tools and of diffusers. A *diffusers-format* file without any alpha is
read as the 4DNeX release: the release ships ``pytorch_lora_weights.safetensors`` in exactly that
form, trained at rank 64 with lora_alpha 32, and its inference fuses it at
``lora_scale=0.5``. Reading it with alpha = :data:`RELEASE_ALPHA_OVER_RANK` * rank (32 at rank
64) makes strength 1.0 reproduce the release (delta_W = 0.5 * B @ A). Pass
``alpha_over_rank_if_missing=1.0`` to read a generic alpha-less diffusers LoRA the diffusers way.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from fourdnex_core.loading.safetensors_io import check_finite, read_header
from fourdnex_core.loading.wan_keys import diffusers_to_original, original_to_diffusers, strip_original_prefix
from fourdnex_core.lora.domain_embeddings import check_domain_embeddings

logger = logging.getLogger(__name__)

RELEASE_ALPHA_OVER_RANK = 0.5
"""alpha / rank of the released 4DNeX LoRA (rank 64, lora_alpha 32; fused at lora_scale 0.5)."""

FOURDNEX_FORMAT = "fourdnex-lora"
"""Value of the safetensors metadata ``format`` in our single-file LoRA (see ``convert``)."""

DOMAIN_EMBEDDINGS_KEY = "fourdnex.domain_embeddings"
"""Key of the [2, inner_dim] domain embeddings in our single-file LoRA."""

_DIFFUSERS_PREFIX = "transformer."
_KOHYA_PREFIX = "lora_unet_"
_PEFT_METADATA_KEY = "lora_adapter_metadata"
_SUFFIXES = {
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".alpha": "alpha",
}
_SHOWN = 5  # names listed in error messages
# Substrings of module names that identify LoRAs for other models, for error messages.
_FOREIGN_MARKERS = (
    (("double_blocks", "single_blocks", "single_transformer_blocks"), "a Flux-style DiT"),
    (("transformer_blocks",), "a DiT with `transformer_blocks` (Flux, HunyuanVideo, CogVideoX, LTX, Qwen-Image, ...)"),
    (("down_blocks", "up_blocks", "input_blocks", "output_blocks", "mid_block"), "a Stable Diffusion UNet"),
    (("text_model", "lora_te", "encoder.block"), "a text encoder"),
)


class LoraFormat(str, enum.Enum):
    """Key layout of a LoRA file; see the module docstring."""

    DIFFUSERS = "diffusers"
    COMFYUI = "comfyui"
    KOHYA = "kohya"
    FOURDNEX = "fourdnex"


@dataclass(frozen=True)
class LoraLayer:
    """One low-rank update of an ``nn.Linear`` weight [out, in].

    Attributes:
        module: module path in the target model (diffusers names, ``blocks.0.attn1.to_q``).
        down: [r, in], applied first (peft's ``lora_A``, kohya's ``lora_down``).
        up: [out, r] (peft's ``lora_B``, kohya's ``lora_up``).
        alpha: the LoRA's alpha; the update at strength s is ``s * alpha / r * up @ down``.
    """

    module: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def scale(self, strength: float) -> float:
        """Factor multiplying ``up @ down`` at this strength: ``strength * alpha / rank``."""
        return strength * self.alpha / self.rank


@dataclass(frozen=True)
class LoraFile:
    """A parsed LoRA file: its format, its layers and, for our format, the domain embeddings [2, D]."""

    format: LoraFormat
    layers: tuple[LoraLayer, ...]
    domain_embeddings: torch.Tensor | None = None


def linear_module_names(model: nn.Module) -> set[str]:
    """Module paths of every ``nn.Linear`` (or subclass) in ``model``: the names a LoRA may target."""
    return {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def read_lora(
    path: str | PathLike,
    model: nn.Module | None = None,
    *,
    linear_names: Collection[str] | None = None,
    alpha_over_rank_if_missing: float | None = None,
) -> LoraFile:
    """Read a LoRA ``.safetensors`` file of any supported format.

    Args:
        path: the file.
        model: the target transformer. Its ``nn.Linear`` names resolve kohya names (required for
            that format) and every module is checked against it. Without a model, names are
            mapped to diffusers names through the Wan key table only.
        linear_names: instead of ``model``, the target's Linear module paths in diffusers names
            (for a model that is not a diffusers module, e.g. ComfyUI's own Wan).
        alpha_over_rank_if_missing: alpha / rank to assume for modules whose file stores no
            alpha. ``None``: the default of the module docstring (0.5 for an alpha-less
            diffusers file, the 4DNeX release; 1.0 otherwise).
    """
    state_dict, metadata = read_safetensors(path)
    if model is not None:
        linear_names = linear_module_names(model)
    return parse_lora_state_dict(
        state_dict, metadata, linear_names=linear_names, alpha_over_rank_if_missing=alpha_over_rank_if_missing
    )


def read_safetensors(path: str | PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on CPU) and the string metadata of a ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}. Check the path.")
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{path.name}: LoRA files are read as .safetensors only (pickled .pt/.bin files can run code). "
            "Use the .safetensors release, or re-save the state dict with safetensors.torch.save_file."
        )
    read_header(path)  # a truncated or corrupt file fails here with a message that names it
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = dict(handle.metadata() or {})
        state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    check_finite(state_dict, path)
    return state_dict, metadata


def detect_format(keys: Collection[str], metadata: Mapping[str, str] | None = None) -> LoraFormat:
    """The :class:`LoraFormat` of a state dict, from its metadata and key prefixes."""
    if (metadata or {}).get("format") == FOURDNEX_FORMAT:
        return LoraFormat.FOURDNEX
    found = {_prefix_format(key) for key in keys if key != DOMAIN_EMBEDDINGS_KEY}
    if len(found) == 1:
        return found.pop()
    if not found:
        raise ValueError("The LoRA file holds no tensors. Check that it is the right file.")
    raise ValueError(
        f"The LoRA file mixes key layouts ({', '.join(sorted(f.value for f in found))}); examples: "
        f"{sorted(keys)[:_SHOWN]}. Split it into one file per layout, or re-save it from one tool."
    )


def _prefix_format(key: str) -> LoraFormat:
    if key.startswith(_KOHYA_PREFIX):
        return LoraFormat.KOHYA
    if key.startswith(_DIFFUSERS_PREFIX):
        return LoraFormat.DIFFUSERS
    return LoraFormat.COMFYUI  # "diffusion_model.", "model.diffusion_model." or bare module paths


def parse_lora_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    linear_names: Collection[str] | None = None,
    alpha_over_rank_if_missing: float | None = None,
) -> LoraFile:
    """Turn a LoRA state dict of any supported format into a :class:`LoraFile`.

    ``linear_names``: the target model's ``nn.Linear`` module paths (see
    :func:`linear_module_names`); required for kohya files, and when given every module must be
    one of them. For the other arguments see :func:`read_lora`.
    """
    lora_format = detect_format(state_dict.keys(), metadata)
    tensors = dict(state_dict)
    domain_embeddings = _pop_domain_embeddings(tensors, lora_format)
    groups = _group_by_module(tensors, lora_format)
    alpha_of = _alpha_rule(lora_format, groups, metadata, alpha_over_rank_if_missing)
    resolve = _module_resolver(lora_format, linear_names)
    layers, unmatched = [], []
    for key, parts in groups.items():
        module = resolve(key)
        if module is None:
            unmatched.append(key)
            continue
        down, up = _factors(key, parts)
        layers.append(LoraLayer(module=module, down=down, up=up, alpha=alpha_of(key, module, parts, down.shape[0])))
    if unmatched:
        raise unmatched_modules_error(unmatched, linear_names)
    _check_unique(layers)
    return LoraFile(format=lora_format, layers=tuple(layers), domain_embeddings=domain_embeddings)


def _pop_domain_embeddings(tensors: dict[str, torch.Tensor], lora_format: LoraFormat) -> torch.Tensor | None:
    """Remove and check the [2, inner_dim] domain embeddings of our format, if present."""
    domain_embeddings = tensors.pop(DOMAIN_EMBEDDINGS_KEY, None)
    if domain_embeddings is None:
        return None
    if lora_format is not LoraFormat.FOURDNEX:
        raise ValueError(f"{DOMAIN_EMBEDDINGS_KEY} found in a file without format metadata '{FOURDNEX_FORMAT}'. "
                         "Re-write the file with fourdnex_core.lora.convert.")
    return check_domain_embeddings(domain_embeddings)


def _alpha_rule(
    lora_format: LoraFormat,
    groups: Mapping[str, Mapping[str, torch.Tensor]],
    metadata: Mapping[str, str] | None,
    alpha_over_rank_if_missing: float | None,
) -> Callable[[str, str, Mapping[str, torch.Tensor], int], float]:
    """A function (key, module, parts, rank) -> alpha implementing the rules of the module docstring.

    Order: the module's stored ``.alpha``; else peft metadata (diffusers files); else
    ``alpha_over_rank_if_missing * rank``, whose default is 0.5 for an alpha-less diffusers file
    (the 4DNeX release) and 1.0 otherwise.
    """
    stored = [key for key, parts in groups.items() if "alpha" in parts]
    if lora_format is LoraFormat.FOURDNEX and len(stored) != len(groups):
        raise ValueError("A fourdnex-lora file must store <module>.alpha for every module; this one does not. "
                         "Re-write it with fourdnex_core.lora.convert.")
    peft = _PeftAlpha.from_metadata(metadata) if lora_format is LoraFormat.DIFFUSERS else None
    ratio = alpha_over_rank_if_missing
    if ratio is None:
        release = lora_format is LoraFormat.DIFFUSERS and not stored and peft is None
        ratio = RELEASE_ALPHA_OVER_RANK if release else 1.0
        if release:
            logger.info("Diffusers-format LoRA without alpha: read as the 4DNeX release, alpha = %g * rank "
                        "(strength 1.0 = the release's fuse at lora_scale 0.5).", RELEASE_ALPHA_OVER_RANK)

    def alpha_of(key: str, module: str, parts: Mapping[str, torch.Tensor], rank: int) -> float:
        if "alpha" in parts:
            return _scalar(key, parts["alpha"])
        if peft is not None:
            return peft.alpha(module, rank)
        return ratio * rank

    return alpha_of


def _group_by_module(
    tensors: Mapping[str, torch.Tensor], lora_format: LoraFormat
) -> dict[str, dict[str, torch.Tensor]]:
    """{module key without prefix: {"down" | "up" | "alpha": tensor}}; unknown tensors are an error."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unsupported = []
    for key, tensor in tensors.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            unsupported.append(key)
            continue
        module_key = _strip_prefix(key[: -len(suffix)], lora_format)
        part = _SUFFIXES[suffix]
        if part in groups.setdefault(module_key, {}):
            raise ValueError(f"Two {part} tensors for module {module_key!r} (e.g. both lora_A and lora_down). "
                             "The file is inconsistent; re-export it from its training tool.")
        groups[module_key][part] = tensor
    if unsupported:
        raise ValueError(
            f"{len(unsupported)} tensors are not plain LoRA factors or alphas, e.g. {sorted(unsupported)[:_SHOWN]}. "
            "Only lora_A/lora_B, lora_down/lora_up and .alpha are supported (no DoRA, LoKr, bias or weight "
            "diffs). Use a plain LoRA export of this model."
        )
    return groups


def _strip_prefix(module_key: str, lora_format: LoraFormat) -> str:
    if lora_format is LoraFormat.KOHYA:
        return module_key[len(_KOHYA_PREFIX):]
    if lora_format is LoraFormat.COMFYUI:
        return strip_original_prefix(module_key)
    return module_key.removeprefix(_DIFFUSERS_PREFIX)


def _factors(key: str, parts: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(down [r, in], up [out, r]) of one module, checked for presence, 2D shape and equal rank."""
    missing = [part for part in ("down", "up") if part not in parts]
    if missing:
        raise ValueError(f"Module {key!r} has no {' or '.join(missing)} factor in the LoRA file. "
                         "The file is incomplete; download or export it again.")
    down, up = parts["down"], parts["up"]
    if down.ndim != 2 or up.ndim != 2:
        raise ValueError(f"Module {key!r}: LoRA factors must be 2D (Linear layers), got down {tuple(down.shape)} "
                         f"and up {tuple(up.shape)}. Convolution LoRAs are not supported.")
    if down.shape[0] != up.shape[1]:
        raise ValueError(f"Module {key!r}: down {tuple(down.shape)} has rank {down.shape[0]} but up "
                         f"{tuple(up.shape)} has rank {up.shape[1]}. The file is corrupt or up/down are swapped.")
    return down, up


def _scalar(key: str, alpha: torch.Tensor) -> float:
    if alpha.numel() != 1:
        raise ValueError(f"{key}.alpha must be a scalar, got shape {tuple(alpha.shape)}. The file is corrupt.")
    value = float(alpha.item())
    if not math.isfinite(value):
        raise ValueError(f"{key}.alpha is {value}. The file is corrupt; re-export it.")
    return value


@dataclass(frozen=True)
class _PeftAlpha:
    """Alpha from diffusers' ``lora_adapter_metadata`` (a serialised peft ``LoraConfig``)."""

    lora_alpha: float
    alpha_pattern: Mapping[str, float]
    use_rslora: bool

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str] | None) -> _PeftAlpha | None:
        raw = (metadata or {}).get(_PEFT_METADATA_KEY)
        if not raw:
            return None
        config = json.loads(raw)
        config = {key.removeprefix(_DIFFUSERS_PREFIX): value for key, value in config.items()}
        if config.get("use_dora"):
            raise ValueError("This is a DoRA adapter (use_dora in its metadata); only plain LoRA is supported. "
                             "Use a plain LoRA export.")
        if config.get("lora_alpha") is None:
            return None
        return cls(
            lora_alpha=float(config["lora_alpha"]),
            alpha_pattern=dict(config.get("alpha_pattern") or {}),
            use_rslora=bool(config.get("use_rslora")),
        )

    def alpha(self, module: str, rank: int) -> float:
        """Alpha of ``module`` as peft computes it (pattern match on the module path's tail)."""
        alpha = next((float(value) for pattern, value in self.alpha_pattern.items()
                      if re.match(rf"(.*\.)?({pattern})$", module)), self.lora_alpha)
        # rsLoRA scales by alpha / sqrt(r); the equivalent plain alpha is alpha * sqrt(r).
        return alpha * math.sqrt(rank) if self.use_rslora else alpha


def _module_resolver(lora_format: LoraFormat, linear_names: Collection[str] | None) -> Callable[[str], str | None]:
    """A function from a module key (prefix stripped) to the target module path, or None."""
    if lora_format is LoraFormat.KOHYA:
        if linear_names is None:
            raise ValueError("Kohya (lora_unet_*) names flatten '.' to '_' and can only be resolved against the "
                             "target model: pass the model (read_lora(path, model)).")
        table = _flattened_names(linear_names)
        return table.get
    if linear_names is None:
        return _to_diffusers_name
    names = set(linear_names)

    def resolve(key: str) -> str | None:
        if key in names:
            return key
        mapped = _to_diffusers_name(key)
        return mapped if mapped in names else None

    return resolve


def _to_diffusers_name(path: str) -> str | None:
    """A Wan module path in either naming -> its diffusers path; None if it is no known module."""
    original = diffusers_to_original(path)
    if original is not None and original_to_diffusers(original) == path:
        return path
    mapped = original_to_diffusers(path)
    if mapped is not None and diffusers_to_original(mapped) == path:
        return mapped
    return None


def _flattened_names(linear_names: Collection[str]) -> dict[str, str]:
    """{flattened name: module path} for kohya keys, in both the diffusers and the original naming."""
    table = {}
    for name in linear_names:
        table[name.replace(".", "_")] = name
        original = diffusers_to_original(name)
        if original is not None and original_to_diffusers(original) == name:
            table[original.replace(".", "_")] = name
    return table


def _check_unique(layers: list[LoraLayer]) -> None:
    seen: set[str] = set()
    for layer in layers:
        if layer.module in seen:
            raise ValueError(f"The LoRA file has two entries for module {layer.module!r} (under different names). "
                             "Keep one naming per file.")
        seen.add(layer.module)


def unmatched_modules_error(names: Collection[str], linear_names: Collection[str] | None) -> ValueError:
    """The error for LoRA modules that are no ``nn.Linear`` of the target model, with a guess why."""
    shown = sorted(names)[:_SHOWN]
    target = "Linear layer of this transformer" if linear_names is not None else "known Wan transformer module"
    return ValueError(
        f"{len(names)} LoRA modules match no {target}, e.g. {shown}. {_guess_origin(names, linear_names)} "
        "Load a LoRA made for the Wan2.1 image-to-video transformer."
    )


def _guess_origin(names: Collection[str], linear_names: Collection[str] | None) -> str:
    """One sentence on which model the LoRA seems to be for."""
    for markers, family in _FOREIGN_MARKERS:
        if any(marker in name for name in names for marker in markers):
            return f"The LoRA seems to be for {family}, not Wan."
    blocks = [int(m.group(1)) for name in names if (m := re.search(r"blocks[._](\d+)[._]", name))]
    if linear_names is not None and blocks:
        have = {int(m.group(1)) for name in linear_names if (m := re.match(r"blocks\.(\d+)\.", name))}
        if have and max(blocks) > max(have):
            return (f"It targets block {max(blocks)} but this transformer has {max(have) + 1} blocks: it seems to be "
                    "for a deeper Wan model (Wan2.1 14B has 40 blocks, 1.3B has 30).")
    if any("img" in name or "add_k_proj" in name or "add_v_proj" in name for name in names):
        return "It targets image cross-attention: it seems to be for Wan image-to-video, but this model has none."
    return "It does not seem to be a LoRA for this Wan transformer."
