"""The per-clip training cache: one ``<clip>.safetensors`` file per prepared clip.

=====================  ==================  ==============================================
tensor                 shape               meaning
=====================  ==================  ==============================================
``rgb_latent``         [16, f, h, w]       RGB video latent (Wan-normalized)
``xyz_latent``         [16, f, h, w]       XYZ video latent (Wan-normalized; the 4DNeX
                                           mu/sigma is applied by the trainer)
``condition``          [20, f, h, 2w]      mask (4) + condition latent (16), as inference
``image_embeds``       [257, image_dim]    CLIP penultimate states of the first frame
``prompt_embeds``      [512, text_dim]     UMT5 states of the caption + ``POINTMAP_STYLE.``
``xyz_center``         [F, 3]              per-frame centre removed by the normalization
=====================  ==================  ==============================================

Metadata (strings): ``format`` = ``fourdnex-train-cache``, ``name``, ``prompt``, ``fingerprint``
(hash of every setting that changes the content), ``xyz_scale``, ``num_frames``, ``height``,
``width``, ``source_frames``, ``padded``. Files are written to a temporary name and renamed, so a
file that exists is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from fourdnex_core.loading.safetensors_io import save_tensors

CACHE_FORMAT = "fourdnex-train-cache"
CACHE_VERSION = "1"
TENSORS = ("rgb_latent", "xyz_latent", "condition", "image_embeds", "prompt_embeds", "xyz_center")


@dataclasses.dataclass
class CachedClip:
    """One clip's cached tensors (see the module docstring for shapes) and its metadata."""

    name: str
    rgb_latent: torch.Tensor
    xyz_latent: torch.Tensor
    condition: torch.Tensor
    image_embeds: torch.Tensor
    prompt_embeds: torch.Tensor
    xyz_center: torch.Tensor
    metadata: dict[str, str]


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short stable hash of the settings that determine a cache file's content."""
    text = json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, name: str) -> Path:
    """Where clip ``name`` is cached."""
    return Path(cache_dir) / f"{name}.safetensors"


def write_cached_clip(path: Path, clip: CachedClip) -> Path:
    """Write ``clip`` (its metadata must hold the keys of the module docstring)."""
    tensors = {key: getattr(clip, key) for key in TENSORS}
    metadata = {**clip.metadata, "format": CACHE_FORMAT, "name": clip.name}
    return save_tensors(path, tensors, metadata)


def read_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a cache file, or None when it is missing, unreadable or not a cache file."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except (OSError, SafetensorError):
        return None
    return metadata if metadata.get("format") == CACHE_FORMAT else None


def is_cached(path: Path, expected_fingerprint: str) -> bool:
    """True when ``path`` is a complete cache file made with the same settings."""
    metadata = read_metadata(path)
    return metadata is not None and metadata.get("fingerprint") == expected_fingerprint


def read_cached_clip(path: Path) -> CachedClip:
    """Load one cache file (CPU tensors, as stored); a file holding NaN or infinite values is refused."""
    metadata = read_metadata(path)
    if metadata is None:
        raise ValueError(f"{path} is not a 4DNeX training cache file; run `fourdnex-train prepare` to (re)write it.")
    with safe_open(str(path), framework="pt") as handle:
        missing = [key for key in TENSORS if key not in handle.keys()]
        if missing:
            raise ValueError(f"{path} lacks {missing}; delete it and run `fourdnex-train prepare` again.")
        tensors = {key: handle.get_tensor(key) for key in TENSORS}
    broken = [key for key, tensor in tensors.items() if not torch.isfinite(tensor).all()]
    if broken:
        raise ValueError(f"{path} holds NaN or infinite values in {', '.join(broken)} (its clip's frames or point "
                         "maps, or the encoders that prepared it); delete it and run `fourdnex-train prepare` again, "
                         "or drop the clip.")
    return CachedClip(name=metadata["name"], metadata=metadata, **tensors)


def list_cache(cache_dir: str | Path) -> list[Path]:
    """Every cache file in ``cache_dir`` (sorted); temporary files of interrupted writes (hidden
    ``.partial`` files) are ignored. A ``.safetensors`` file that is not a readable cache file
    (truncated, corrupt, another kind of file) is an error naming it: training on the others
    would silently change the data and the data order."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise FileNotFoundError(f"No cache folder {cache_dir}; run `fourdnex-train prepare CONFIG` first.")
    candidates = [path for path in sorted(cache_dir.glob("*.safetensors")) if not path.name.startswith(".")]
    unreadable = [path.name for path in candidates if read_metadata(path) is None]
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise ValueError(f"{cache_dir} holds {len(unreadable)} file(s) that are not readable training cache files "
                         f"({shown}): truncated, corrupt or another kind of file. Run `fourdnex-train prepare "
                         "CONFIG` again (it rewrites only those clips), or move the files out of the folder.")
    if not candidates:
        raise ValueError(f"{cache_dir} holds no prepared clips; run `fourdnex-train prepare CONFIG` first.")
    return candidates
