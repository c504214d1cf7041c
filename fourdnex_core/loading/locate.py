"""Find the file or folder that holds one Wan2.1 component, from whatever path the user has.

Accepted paths:

(a) a diffusers model folder, e.g. ``Wan2.1-I2V-14B-480P-Diffusers/`` (has ``model_index.json``
    or component subfolders ``transformer/``, ``vae/``, ``text_encoder/``, ``image_encoder/``
    with a ``config.json``),
    or one component folder of it (``config.json`` + ``diffusion_pytorch_model*.safetensors``);
(b) a ComfyUI ``models/`` folder (``diffusion_models/``, ``vae/``, ``text_encoders/``,
    ``clip_vision/``; the older names ``unet/`` and ``clip/`` too), or the ComfyUI folder that
    contains ``models/``;
(c) a model file.

In a ComfyUI folder the known file names are tried in the order of :data:`COMFY_FILE_NAMES`
(first found wins: full precision before fp8), searching subfolders too, unless a
``file_name`` is given. A single unknown ``.safetensors`` file is used as is (detection will
say what it holds); several unknown files are ambiguous and need ``file_name``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

Component = Literal["transformer", "vae", "text_encoder", "clip_vision"]
COMPONENTS: tuple[str, ...] = ("transformer", "vae", "text_encoder", "clip_vision")

# ComfyUI file names in order of preference.
COMFY_FILE_NAMES: dict[str, tuple[str, ...]] = {
    "transformer": (
        "wan2.1_i2v_480p_14B_bf16.safetensors",
        "wan2.1_i2v_480p_14B_fp16.safetensors",
        "wan2.1_i2v_480p_14B_fp8_scaled.safetensors",
        "wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors",
    ),
    "vae": ("wan_2.1_vae.safetensors",),
    "text_encoder": ("umt5_xxl_fp16.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
    "clip_vision": ("clip_vision_h.safetensors",),
}
# ComfyUI subfolders of models/ per component (current name first).
COMFY_FOLDERS: dict[str, tuple[str, ...]] = {
    "transformer": ("diffusion_models", "unet"),
    "vae": ("vae",),
    "text_encoder": ("text_encoders", "clip"),
    "clip_vision": ("clip_vision",),
}
# Subfolder of a diffusers model folder per component, and its weight file names.
DIFFUSERS_SUBFOLDERS: dict[str, str] = {
    "transformer": "transformer",
    "vae": "vae",
    "text_encoder": "text_encoder",
    "clip_vision": "image_encoder",
}
DIFFUSERS_WEIGHT_NAMES: dict[str, str] = {
    "transformer": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
    "clip_vision": "model",
}
DIFFUSERS_MODEL_FOLDER = "Wan2.1-I2V-14B-480P-Diffusers"
_WEIGHT_SUFFIXES = (".safetensors", ".sft")


class ModelNotFoundError(FileNotFoundError):
    """The path does not hold the requested component where it is expected."""


@dataclass(frozen=True)
class ModelSource:
    """Where one component's weights are.

    Attributes:
        component: ``"transformer"``, ``"vae"``, ``"text_encoder"`` or ``"clip_vision"``.
        kind: ``"diffusers"`` (``path`` is a component folder with ``config.json``) or
            ``"single_file"`` (``path`` is a ``.safetensors`` file).
        path: the folder or file.
    """

    component: str
    kind: Literal["diffusers", "single_file"]
    path: Path


def file_or_file_in(path: str | os.PathLike[str], name: str, *, fix: str) -> Path:
    """``path`` when it is a file, ``path / name`` when it is a folder; a FileNotFoundError naming
    the missing file and ``fix`` (what to pass instead) when that is no file."""
    path = Path(path)
    candidate = path / name if path.is_dir() else path
    if not candidate.is_file():
        raise FileNotFoundError(f"{candidate} does not exist; {fix}")
    return candidate


def expected_locations(component: str) -> str:
    """Human-readable list of where ``component`` is looked for, for error messages."""
    comfy = COMFY_FOLDERS[component][0]
    names = ", ".join(COMFY_FILE_NAMES[component])
    weights = DIFFUSERS_WEIGHT_NAMES[component]
    return (
        f"ComfyUI: models/{comfy}/ with one of {names}; diffusers: {DIFFUSERS_MODEL_FOLDER}/"
        f"{DIFFUSERS_SUBFOLDERS[component]}/ with config.json and {weights}.safetensors "
        f"(or {weights}-0000N-of-0000M.safetensors shards with {weights}.safetensors.index.json)"
    )


def locate(path: str | os.PathLike[str], component: str, *, file_name: str | None = None) -> ModelSource:
    """The :class:`ModelSource` for ``component`` under ``path`` (see the module docs).

    Args:
        path: a diffusers model or component folder, a ComfyUI (``models/``) folder, or a file.
        component: one of :data:`COMPONENTS`.
        file_name: in a ComfyUI folder, the file to use instead of the preference order; a
            name or a path relative to the component folder.

    Raises:
        ModelNotFoundError: nothing suitable at ``path``; the message lists what was found and
            what is expected.
        ValueError: unknown ``component``, or several unknown candidate files.
    """
    if component not in COMPONENTS:
        raise ValueError(f"Unknown component {component!r}; expected one of {', '.join(COMPONENTS)}.")
    path = Path(path).expanduser()
    if path.is_file():
        return ModelSource(component, "single_file", path)
    if not path.exists():
        raise ModelNotFoundError(
            f"{path} does not exist. Expected the {component} at: {expected_locations(component)}."
        )
    if _is_diffusers_component(path):
        return ModelSource(component, "diffusers", _check_diffusers_component(path, component))
    if _is_diffusers_model(path):
        folder = path / DIFFUSERS_SUBFOLDERS[component]
        return ModelSource(component, "diffusers", _check_diffusers_component(folder, component))
    models = _comfy_models_folder(path)
    if models is not None:
        return ModelSource(component, "single_file", _pick_comfy_file(models, component, file_name))
    raise ModelNotFoundError(
        f"{path} is neither a diffusers model folder (model_index.json, or transformer/, vae/ subfolders with "
        "config.json), "
        "a ComfyUI models folder (diffusion_models/, vae/, text_encoders/, clip_vision/) nor a model file. "
        f"Expected the {component} at: {expected_locations(component)}."
    )


def as_source(source_or_path: ModelSource | str | os.PathLike[str], component: str) -> ModelSource:
    """``source_or_path`` itself if it is a :class:`ModelSource` for ``component``, else :func:`locate` it."""
    if isinstance(source_or_path, ModelSource):
        if source_or_path.component != component:
            raise ValueError(f"Expected a {component} source, got one for the {source_or_path.component}.")
        return source_or_path
    return locate(source_or_path, component)


def diffusers_weight_files(folder: Path, component: str) -> list[Path]:
    """The safetensors files of a diffusers component folder: one file, or the shards its index lists."""
    stem = DIFFUSERS_WEIGHT_NAMES[component]
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ModelNotFoundError(
                f"{index} is not a valid shard index ({error}); download it again."
            ) from error
        shards = sorted({folder / name for name in weight_map.values()})
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise ModelNotFoundError(
                f"{folder} is missing shards listed in {index.name}: {', '.join(missing)}. Download them again."
            )
        return shards
    found = ", ".join(sorted(entry.name for entry in folder.iterdir())) if folder.is_dir() else ""
    raise ModelNotFoundError(
        f"{folder} has no {stem}.safetensors or {stem}.safetensors.index.json (found: {found or 'nothing'}). "
        f"Expected the {component} at: {expected_locations(component)}."
    )


def _is_diffusers_model(path: Path) -> bool:
    """``model_index.json``, or a component subfolder with a ``config.json`` (ComfyUI's ``vae/`` has none)."""
    if (path / "model_index.json").is_file():
        return True
    return any((path / sub / "config.json").is_file() for sub in DIFFUSERS_SUBFOLDERS.values())


def _is_diffusers_component(path: Path) -> bool:
    return (path / "config.json").is_file()


def _check_diffusers_component(folder: Path, component: str) -> Path:
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"{folder} has no config.json. Expected the {component} at: {expected_locations(component)}."
        )
    diffusers_weight_files(folder, component)
    return folder


def _comfy_models_folder(path: Path) -> Path | None:
    """``path`` if it is a ComfyUI models folder, ``path / "models"`` for the ComfyUI root, else None."""
    for candidate in (path, path / "models"):
        if any((candidate / name).is_dir() for names in COMFY_FOLDERS.values() for name in names):
            return candidate
    return None


def _candidate_files(models: Path, component: str) -> list[Path]:
    files = []
    for folder in COMFY_FOLDERS[component]:
        root = models / folder
        if root.is_dir():
            files.extend(p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    return files


def _pick_comfy_file(models: Path, component: str, file_name: str | None) -> Path:
    folders = " or ".join(f"{models / name}/" for name in COMFY_FOLDERS[component])
    candidates = _candidate_files(models, component)
    listing = ", ".join(str(p.relative_to(models)) for p in candidates) or "no .safetensors files"
    if file_name is not None:
        for candidate in candidates:
            relative = candidate.relative_to(models).parts[1:]
            if file_name in (candidate.name, str(Path(*relative))):
                return candidate
        raise ModelNotFoundError(f"No file {file_name!r} in {folders} (found: {listing}).")
    by_name = {candidate.name: candidate for candidate in candidates}
    for preferred in COMFY_FILE_NAMES[component]:
        if preferred in by_name:
            return by_name[preferred]
    if len(candidates) == 1:
        logger.info("Using %s as the %s (not one of the known file names).", candidates[0], component)
        return candidates[0]
    expected = ", ".join(COMFY_FILE_NAMES[component])
    if not candidates:
        raise ModelNotFoundError(
            f"No {component} file in {folders} (found: {listing}). Expected one of: {expected} "
            f"(or a {DIFFUSERS_MODEL_FOLDER} folder)."
        )
    raise ValueError(
        f"Several {component} candidates in {folders} and none has a known name (found: {listing}). "
        f"Known names: {expected}. Pass the file itself: --{component.replace('_', '-')} PATH on the command line, "
        f"or {component}=PATH in ModelLocations (file_name=... in locate)."
    )
