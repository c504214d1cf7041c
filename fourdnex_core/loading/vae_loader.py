"""Load the Wan2.1 VAE (``AutoencoderKLWan``) from a diffusers folder or ComfyUI's single file, offline.

``models/vae/wan_2.1_vae.safetensors`` uses the original Wan names; they are renamed tensor by
tensor with :mod:`~fourdnex_core.loading.wan_vae_keys` into a model built on the meta device.
"""

from __future__ import annotations

import logging
import os

import torch
from diffusers import AutoencoderKLWan

from fourdnex_core.loading.detect import inspect_vae
from fourdnex_core.loading.locate import ModelSource, as_source
from fourdnex_core.loading.safetensors_io import (
    TensorEntry,
    assign_state_dict,
    build_empty_model,
    iter_tensors,
    merge_headers,
)
from fourdnex_core.loading.wan_vae_keys import vae_original_to_diffusers

logger = logging.getLogger(__name__)


def load_vae(
    source_or_path: ModelSource | str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> AutoencoderKLWan:
    """Load the Wan2.1 VAE in ``dtype`` on ``device``, in eval mode.

    Args:
        source_or_path: a :class:`ModelSource`, or a diffusers folder, ComfyUI models folder or
            ``.safetensors`` file.
        dtype: weight dtype (float32 by default, as Wan decodes).
        device: where the weights go, tensor by tensor.

    Raises:
        ModelNotFoundError, CorruptSafetensorsError, UnsupportedModelError: missing, damaged
            or wrong files; ValueError: tensors that do not fit the model.
    """
    checkpoint = inspect_vae(as_source(source_or_path, "vae"))
    source = checkpoint.source.path
    model = build_empty_model(AutoencoderKLWan, checkpoint.config)
    num_res_blocks = model.config.num_res_blocks
    device = torch.device(device)
    state_dict = {}
    entries = merge_headers(checkpoint.headers)

    def final_dtype(entry: TensorEntry) -> torch.dtype:
        return dtype if entry.dtype.is_floating_point else entry.dtype

    def staged(entry: TensorEntry) -> bool:
        """Read into the staging buffer when the dtype conversion or device move below copies anyway."""
        return device.type != "cpu" or final_dtype(entry) != entry.dtype

    for entry, tensor in iter_tensors(entries.values(), description=f"Loading {source.name}", staged=staged):
        name = entry.name
        if checkpoint.key_style == "original":
            name = vae_original_to_diffusers(name, num_res_blocks) or name
        state_dict[name] = tensor.to(device, final_dtype(entry))
    assign_state_dict(model, state_dict, source=source)
    logger.info("Loaded the Wan VAE from %s (%s names) as %s on %s.", source, checkpoint.key_style, dtype, device)
    return model.to(device).eval()
