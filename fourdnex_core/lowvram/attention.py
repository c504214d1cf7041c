"""Attention backends by name, through diffusers' attention dispatcher.

diffusers routes every Wan attention call through ``dispatch_attention_fn``; a model's backend
is set with ``set_attention_backend``. This module maps the names users know to diffusers'
backends, checks up front that the optional package is installed and the device fits (so a
missing SageAttention is one clear sentence, not a failure deep inside the first step), and never
picks a backend that downloads kernels.

=============  ==================================  ===========================================
name           diffusers backend                   needs
=============  ==================================  ===========================================
``sdpa``       ``native`` (default)                PyTorch (picks flash / efficient / math)
``math``       ``_native_math``                    PyTorch (the reference, slow, any device)
``cudnn``      ``_native_cudnn``                   CUDA
``flash``      ``flash`` (FlashAttention 2)        CUDA, ``pip install flash-attn``
``flash3``     ``_flash_3`` (FlashAttention 3)     Hopper, FlashAttention 3 built from source
``sage``       ``sage`` (SageAttention, 8-bit QK)  CUDA, SageAttention >= 2.1.1 (from source)
``xformers``   ``xformers``                        CUDA, ``pip install xformers``
=============  ==================================  ===========================================
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import logging

import torch
from diffusers.models.attention_dispatch import AttentionBackendName
from packaging.version import Version
from torch import nn

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AttentionBackend:
    """One selectable backend: diffusers' name, the module it imports, how to install it, and the
    oldest version of that package diffusers runs (``min_version`` of distribution ``distribution``)."""

    name: str
    diffusers_name: str
    package: str | None = None
    install: str | None = None
    cuda_only: bool = False
    distribution: str | None = None
    min_version: str | None = None


BACKENDS: dict[str, AttentionBackend] = {
    backend.name: backend
    for backend in (
        AttentionBackend("sdpa", "native"),
        AttentionBackend("math", "_native_math"),
        AttentionBackend("cudnn", "_native_cudnn", cuda_only=True),
        AttentionBackend("flash", "flash", "flash_attn", "pip install flash-attn --no-build-isolation", True,
                         "flash-attn", "2.6.3"),
        AttentionBackend("flash3", "_flash_3", "flash_attn_interface",
                         "build FlashAttention 3 from source (github.com/Dao-AILab/flash-attention, hopper/)", True),
        AttentionBackend("sage", "sage", "sageattention",
                         "build SageAttention 2 from source (github.com/thu-ml/SageAttention; PyPI's `sageattention` "
                         "is 1.0.6, older than diffusers takes)", True, "sageattention", "2.1.1"),
        AttentionBackend("xformers", "xformers", "xformers", "pip install xformers", True, "xformers", "0.0.29"),
    )
}


def is_installed(backend: AttentionBackend) -> bool:
    """Whether the backend's optional package can be imported (PyTorch backends always can)."""
    return backend.package is None or importlib.util.find_spec(backend.package) is not None


def installed_version(backend: AttentionBackend) -> str | None:
    """The installed version of the backend's package, when it has a version requirement and metadata."""
    if backend.distribution is None:
        return None
    try:
        return importlib.metadata.version(backend.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_recent_enough(backend: AttentionBackend) -> bool:
    """Whether the installed package meets diffusers' minimum (unknown versions are given the benefit)."""
    found = installed_version(backend)
    return found is None or backend.min_version is None or Version(found) >= Version(backend.min_version)


def available_attention_backends(device: torch.device | str) -> list[str]:
    """Names of the backends usable on ``device`` with the packages installed here."""
    cuda = torch.device(device).type == "cuda"
    return [name for name, backend in BACKENDS.items()
            if is_installed(backend) and is_recent_enough(backend) and (cuda or not backend.cuda_only)]


def check_attention_backend(name: str, device: torch.device | str) -> AttentionBackend:
    """The backend called ``name``, or a clear error saying what to install or choose instead."""
    if name not in BACKENDS:
        raise ValueError(f"Unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    backend = BACKENDS[name]
    if not is_installed(backend):
        raise ImportError(
            f"Attention backend {name!r} needs the `{backend.package}` package, which is not installed: "
            f"{backend.install}. Or use 'sdpa' (PyTorch's, always available)."
        )
    if not is_recent_enough(backend):
        raise ImportError(
            f"Attention backend {name!r} needs {backend.distribution} >= {backend.min_version} (diffusers' minimum); "
            f"{installed_version(backend)} is installed: {backend.install}. Or use 'sdpa' (PyTorch's, always "
            "available)."
        )
    if backend.cuda_only and torch.device(device).type != "cuda":
        raise ValueError(f"Attention backend {name!r} runs on CUDA GPUs only; on {device} use 'sdpa'.")
    return backend


def set_attention_backend(model: nn.Module, name: str, device: torch.device | str) -> int:
    """Make every attention layer of ``model`` (a diffusers model) use backend ``name`` on ``device``.

    Sets the backend on each attention processor of ``model`` only. (diffusers' own
    ``ModelMixin.set_attention_backend`` also changes the process-wide default, which would switch
    every other model, the VAE and encoders included.) Returns the number of attention layers set.
    """
    backend = check_attention_backend(name, device)
    diffusers_backend = AttentionBackendName(backend.diffusers_name)
    processors = [module.processor for module in model.modules()
                  if hasattr(getattr(module, "processor", None), "_attention_backend")]
    if not processors:
        raise TypeError(f"{type(model).__name__} has no diffusers attention layers; attention backends need a "
                        "diffusers transformer.")
    for processor in processors:
        processor._attention_backend = diffusers_backend
    logger.info("Attention backend: %s (diffusers %r) on %d layers.", name, backend.diffusers_name, len(processors))
    return len(processors)
