"""What the nodes take from ComfyUI when it is there, with plain fallbacks when it is not.

ComfyUI's modules (``folder_paths``, ``comfy.model_management``, ``comfy.utils``) are imported
lazily, so ``import nodes`` and calling the node classes works without ComfyUI (the tests do).
Without ComfyUI, model files are looked up under ``$FOURDNEX_MODELS_DIR`` (a ComfyUI-style
``models/`` folder) and outputs go to ``$FOURDNEX_OUTPUT_DIR`` / ``$FOURDNEX_TEMP_DIR``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from fourdnex_core.devices import resolve_dtype
from fourdnex_core.lowvram import LowVramOptions, transformer_on_device
from fourdnex_core.lowvram.block_swap import model_resident_bytes, module_bytes

from .comfy_values import FourDNeXModel

WEIGHT_SUFFIXES = (".safetensors", ".sft", ".pt", ".pth", ".ckpt", ".bin")


def _comfy(name: str):
    """The ComfyUI module ``name``, or None outside ComfyUI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def require(name: str, attribute: str):
    """ComfyUI's module ``name`` for nodes that work on ComfyUI's own types only, checked to be ComfyUI's
    by ``attribute`` (inside ComfyUI the top-level ``nodes`` is its own); a clear error outside ComfyUI."""
    module = _comfy(name)
    if module is None or not hasattr(module, attribute):
        raise RuntimeError(f"This node works on ComfyUI's own types and runs inside ComfyUI only ({name}).")
    return module


def _fallback_models_dir() -> Path | None:
    value = os.environ.get("FOURDNEX_MODELS_DIR")
    return Path(value) if value else None


def _fallback_folders(folder: str) -> list[Path]:
    root = _fallback_models_dir()
    if root is None:
        return []
    names = {"diffusion_models": ("diffusion_models", "unet"), "text_encoders": ("text_encoders", "clip")}
    return [root / name for name in names.get(folder, (folder,))]


def filename_list(folder: str) -> list[str]:
    """Files of one ComfyUI model folder (``diffusion_models``, ``vae``, ``loras``...), relative names."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        try:
            return list(folder_paths.get_filename_list(folder))
        except KeyError:
            return []
    found = set()
    for base in _fallback_folders(folder):
        if base.is_dir():
            found.update(p.relative_to(base).as_posix() for p in base.rglob("*")
                         if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return sorted(found)


def folder_list(folder: str) -> list[str]:
    """Sub-folders of one ComfyUI model folder (for diffusers model folders under ``models/diffusers``)."""
    folder_paths = _comfy("folder_paths")
    bases = [Path(p) for p in folder_paths.get_folder_paths(folder)] if folder_paths is not None else \
        _fallback_folders(folder)
    names = set()
    for base in bases:
        if base.is_dir():
            names.update(p.name for p in base.iterdir() if p.is_dir())
    return sorted(names)


def full_path(folder: str, name: str) -> Path:
    """The path of ``name`` in a ComfyUI model folder, or an error saying where to put the file."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        path = folder_paths.get_full_path(folder, name)
        if path:
            return Path(path)
    else:
        for base in _fallback_folders(folder):
            if (base / name).exists():
                return base / name
    raise FileNotFoundError(f"{name!r} is not in ComfyUI's models/{folder}/ folder; put the file there "
                            "(or pick one from the list) and refresh the page.")


def diffusers_folder(name: str) -> Path:
    """A diffusers model folder under ``models/diffusers``."""
    folder_paths = _comfy("folder_paths")
    bases = [Path(p) for p in folder_paths.get_folder_paths("diffusers")] if folder_paths is not None else \
        _fallback_folders("diffusers")
    for base in bases:
        if (base / name).is_dir():
            return base / name
    raise FileNotFoundError(f"No diffusers folder {name!r} in ComfyUI's models/diffusers/.")


def output_directory() -> Path:
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return Path(os.environ.get("FOURDNEX_OUTPUT_DIR", "output"))


def input_directory() -> Path:
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_input_directory())
    return Path(os.environ.get("FOURDNEX_INPUT_DIR", "input"))


def temp_directory() -> Path:
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        return Path(folder_paths.get_temp_directory())
    return Path(os.environ.get("FOURDNEX_TEMP_DIR", Path(tempfile.gettempdir()) / "fourdnex_temp"))


def safe_output_folder(output_dir: str | Path, filename_prefix: str) -> tuple[Path, str]:
    """(folder, base name) of a ComfyUI ``filename_prefix`` such as ``"4dnex/scene"`` under ``output_dir``.

    A prefix that is absolute, uses ``..`` or otherwise leaves ``output_dir`` is refused.
    """
    prefix = filename_prefix.strip().replace("\\", "/")
    if not prefix or prefix.endswith("/"):
        raise ValueError(f"filename_prefix {filename_prefix!r} names no file; use e.g. '4dnex/scene'.")
    if prefix.startswith("/") or re.match(r"^[A-Za-z]:", prefix) or ".." in prefix.split("/"):
        raise ValueError(f"filename_prefix {filename_prefix!r} leaves the output folder; use a relative name "
                         "such as '4dnex/scene' (no '..', no absolute path).")
    root = Path(output_dir).resolve()
    folder = (root / prefix).parent.resolve()
    if folder != root and root not in folder.parents:
        raise ValueError(f"filename_prefix {filename_prefix!r} leaves the output folder {root}.")
    return folder, Path(prefix).name


def next_counter(folder: Path, base: str) -> int:
    """The next free counter for ``base_NNNNN_*`` names in ``folder`` (ComfyUI's numbering)."""
    pattern = re.compile(rf"^{re.escape(base)}_(\d{{5}})_")
    escaped = re.sub(r"([*?\[])", r"[\1]", base)
    used = [int(m.group(1)) for p in folder.glob(f"{escaped}_*") if (m := pattern.match(p.name))]
    return max(used, default=0) + 1


def save_path(output_dir: str | Path, filename_prefix: str) -> tuple[Path, str]:
    """(folder, stem ``name_00001_``) of the next files for ``filename_prefix`` under ``output_dir``; the
    folder exists. The prefix is checked by :func:`safe_output_folder`; inside ComfyUI the folder and
    counter come from ``folder_paths.get_save_image_path`` (its ``%date%``-style variables too)."""
    folder, base = safe_output_folder(output_dir, filename_prefix)
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        prefix = filename_prefix.strip().replace("\\", "/")
        full_folder, base, counter, _, _ = folder_paths.get_save_image_path(prefix, str(output_dir))
        folder = Path(full_folder)
    else:
        counter = next_counter(folder, base)
    folder.mkdir(parents=True, exist_ok=True)
    return folder, f"{base}_{counter:05d}_"


# ---------------------------------------------------------------- devices and memory


def torch_device() -> torch.device:
    """ComfyUI's compute device (honours --cpu, --gpu-only...), else CUDA when available."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    """Where idle models wait: ComfyUI's offload device (CPU unless --gpu-only / --highvram)."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        return mm.unet_offload_device()
    return torch.device("cpu")


def precision(name: str, device: torch.device | None = None) -> torch.dtype:
    """``auto`` -> bf16 on CUDA, fp32 on CPU (on ``device``, default ComfyUI's compute device); else the
    named dtype (:func:`fourdnex_core.devices.resolve_dtype`)."""
    return resolve_dtype(name, device or torch_device())


@contextlib.contextmanager
def on_compute_device(*modules: torch.nn.Module) -> Iterator[torch.device]:
    """Move ``modules`` to the compute device for a step, asking ComfyUI to free room first, and
    back to the offload device afterwards (so ComfyUI's own models get the memory back)."""
    device = torch_device()
    mm = _comfy("comfy.model_management")
    if mm is not None and device.type != "cpu":
        mm.free_memory(sum(module_bytes(m) for m in modules) * 1.2, device)
    for module in modules:
        module.to(device)
    try:
        yield device
    finally:
        target = offload_device()
        if target != device:
            for module in modules:
                module.to(target)
            if mm is not None:
                mm.soft_empty_cache()


def _resident_bytes(transformer: torch.nn.Module, options: LowVramOptions) -> int:
    """Bytes of ``transformer`` on the GPU during a run (the resident blocks and the swapped ones in
    flight; with "auto" the whole model: ComfyUI frees what it can and the swap count follows)."""
    swapped = options.blocks_to_swap if isinstance(options.blocks_to_swap, int) else 0
    return model_resident_bytes(transformer, swapped, prefetch=options.prefetch)


@contextlib.contextmanager
def transformer_on_compute_device(model: FourDNeXModel) -> Iterator[torch.device]:
    """Place a 4DNeX transformer for one sampling run as its memory options say (block swap or
    whole), after asking ComfyUI for the room; back to the offload device afterwards."""
    device = torch_device()
    mm = _comfy("comfy.model_management")
    if mm is not None and device.type != "cpu":
        mm.free_memory(_resident_bytes(model.transformer, model.memory) * 1.2, device)
    try:
        with transformer_on_device(model.transformer, model.memory, device, offload_device()):
            yield device
    finally:
        if mm is not None:
            mm.soft_empty_cache()


# ---------------------------------------------------------------- progress and interrupts


def throw_if_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel (no-op without ComfyUI)."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


class Progress:
    """A ComfyUI progress bar (the green bar on the node), or nothing without ComfyUI."""

    def __init__(self, total: int, node_id: str | None = None) -> None:
        utils = _comfy("comfy.utils")
        self.total = total
        self.bar = utils.ProgressBar(total, node_id=node_id) if utils is not None else None
        self.done = 0

    def step(self, done: int | None = None) -> None:
        """Advance by one (or to ``done``), checking for an interrupt first."""
        throw_if_interrupted()
        self.done = self.done + 1 if done is None else done
        if self.bar is not None:
            self.bar.update_absolute(min(self.done, self.total), self.total)


@contextlib.contextmanager
def progress_per_call(module: torch.nn.Module, progress: Progress) -> Iterator[None]:
    """Step ``progress`` (and honour interrupts) at every forward call of ``module``."""

    def tick(*_) -> None:
        progress.step()

    handle = module.register_forward_pre_hook(tick)
    try:
        yield
    finally:
        handle.remove()
