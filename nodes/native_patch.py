"""The 4DNeX changes installed on ComfyUI's native Wan2.1 I2V model, through its patching API only.

A ``MODEL`` (a ``comfy.model_patcher.ModelPatcher`` around ``comfy.model_base.WAN21``) becomes a
4DNeX model in three patches on a clone, none of which edits ComfyUI's code or classes:

1. **LoRA** as ComfyUI weight patches (``ModelPatcher.add_patches``), the mechanism of every
   ComfyUI LoRA: the library converts the LoRA to native Wan names
   (:func:`fourdnex_core.lora.to_comfyui_state_dict`), ComfyUI's own ``comfy.lora.load_lora``
   maps it, so it works on bf16, fp16, fp8 and GGUF weights and under partial loading.
2. **Shared rotary positions**: an object patch of ``diffusion_model.rope_encode`` that builds
   the table for one half of the width and repeats it for the other
   (:func:`fourdnex_core.transformer.share_positions`).
3. **Domain embeddings**: a ``DIFFUSION_MODEL`` wrapper that, around the model call only, adds
   them after ``patch_embedding`` (:func:`fourdnex_core.transformer.add_domain_embeddings`) with
   a forward hook it removes on the way out.

Other patches compose: a second LoRA (``LoraLoaderModelOnly``) adds its own weight patches,
``ModelSamplingSD3`` its object patch of ``model_sampling``; block patches (``patches_replace``)
and other wrappers run inside ours.
"""

from __future__ import annotations

import torch

from fourdnex_core.lora import LoraLayer, to_comfyui_state_dict
from fourdnex_core.transformer import add_domain_embeddings, share_positions

from . import comfy_bridge as comfy

WRAPPER_KEY = "fourdnex"
"""Key of the 4DNeX wrapper in the MODEL's ``DIFFUSION_MODEL`` wrappers (one per model)."""

NEEDED = ("Wan2.1 image-to-video 14B 480p (i2v: 36 input channels, a CLIP image embedding), e.g. "
          "wan2.1_i2v_480p_14B_bf16.safetensors / _fp8_scaled / a GGUF of it")


def describe(model) -> str:
    """What a MODEL holds, in words: class, Wan variant, input channels, width, blocks."""
    base = getattr(model, "model", None)
    diffusion_model = getattr(base, "diffusion_model", None)
    name = type(base).__name__
    if diffusion_model is None or not hasattr(diffusion_model, "patch_embedding"):
        return f"a {name} model"
    variant = getattr(diffusion_model, "model_type", "?")
    channels = diffusion_model.patch_embedding.weight.shape[1]
    blocks = len(getattr(diffusion_model, "blocks", ()))
    image = "with" if getattr(diffusion_model, "img_emb", None) is not None else "without"
    return (f"a {name} model ({variant}, {channels} input channels, width {diffusion_model.dim}, {blocks} blocks, "
            f"{image} a CLIP image embedding)")


def check_wan21_i2v(model, width: int | None) -> None:
    """Refuse a MODEL that is not Wan2.1 image-to-video, or not of the LoRA's ``width``, naming both."""
    model_base = comfy.require("comfy.model_base", "WAN21")
    base = getattr(model, "model", None)
    diffusion_model = getattr(base, "diffusion_model", None)
    fits = (type(base) is model_base.WAN21 and getattr(diffusion_model, "model_type", None) == "i2v"
            and getattr(diffusion_model, "img_emb", None) is not None
            and diffusion_model.patch_embedding.weight.shape[1] == 36)
    if not fits:
        raise ValueError(f"4DNeX needs {NEEDED}; the MODEL connected is {describe(model)}. Load the Wan2.1 I2V "
                         "14B file with UNETLoader (Load Diffusion Model) or a GGUF loader.")
    if width is not None and diffusion_model.dim != width:
        raise ValueError(f"The 4DNeX LoRA and domain embeddings are for a model of width {width}; the MODEL "
                         f"connected is {describe(model)}. Wan2.1 I2V 14B has width 5120: load that model.")


def add_lora_patches(model, layers: list[LoraLayer], strength: float) -> int:
    """Add the LoRA to ``model`` (a clone) as ComfyUI weight patches; returns how many weights it patches.

    Every layer must land on a weight of the model: a LoRA of which any key matches nothing is an
    error (ComfyUI itself would only log it).
    """
    comfy_lora = comfy.require("comfy.lora", "load_lora")
    state_dict = to_comfyui_state_dict(layers)
    key_map = comfy_lora.model_lora_keys_unet(model.model, {})
    patches = comfy_lora.load_lora(state_dict, key_map, log_missing=False)
    if len(patches) != len(layers):
        matched = {key.removeprefix("diffusion_model.").removesuffix(".weight") for key in patches}
        missing = sorted(name.removeprefix("diffusion_model.").removesuffix(".lora_down.weight")
                         for name in state_dict if name.endswith(".lora_down.weight"))
        missing = [name for name in missing if name not in matched]
        raise ValueError(f"{len(missing)} of the LoRA's {len(layers)} layers match no weight of the MODEL "
                         f"({describe(model)}), e.g. {missing[:5]}. Use the 4DNeX LoRA made for Wan2.1 I2V 14B.")
    model.add_patches(patches, strength)
    return len(patches)


class SharedRopeEncode:
    """Object patch for ``WanModel.rope_encode``: the table of one half, repeated for both halves.

    Called as ComfyUI calls ``rope_encode(t, h, w, ...)`` with the latent's (padded) size; ``w``
    is the wide width 2W', so the table is built for ``w // 2`` and tiled by
    :func:`~fourdnex_core.transformer.share_positions`.
    """

    def __init__(self, original, patch_size: tuple[int, int, int]):
        self.original = original
        self.patch_size = patch_size

    def __call__(self, t, h, w, t_start=0, steps_t=None, steps_h=None, steps_w=None, device=None, dtype=None):
        pt, ph, pw = self.patch_size
        if w % (2 * pw):
            raise ValueError(f"A 4DNeX latent is two halves of whole patches wide; got width {w}. Make the video "
                             "with 4DNeX Wan Image to Video (widths that are multiples of 16).")
        half = w // 2
        table = self.original(t, h, half, t_start=t_start, steps_t=steps_t, steps_h=steps_h,
                              steps_w=None if steps_w is None else steps_w // 2, device=device, dtype=dtype)
        frames = steps_t if steps_t is not None else (t + pt // 2) // pt
        rows = steps_h if steps_h is not None else (h + ph // 2) // ph
        half_cols = steps_w // 2 if steps_w is not None else (half + pw // 2) // pw
        return share_positions(table, frames, rows, half_cols)


class DomainEmbeddingWrapper:
    """``DIFFUSION_MODEL`` wrapper adding the two domain embeddings [2, D] after ``patch_embedding``."""

    def __init__(self, embeddings: torch.Tensor):
        self.embeddings = embeddings

    def to(self, device):  # ComfyUI moves wrappers with the model when they have .to
        self.embeddings = self.embeddings.to(device)
        return self

    def __call__(self, executor, *args, **kwargs):
        patch_embedding = executor.class_obj.patch_embedding

        def add(module, inputs, patches):
            return add_domain_embeddings(patches, self.embeddings)

        handle = patch_embedding.register_forward_hook(add)
        try:
            return executor(*args, **kwargs)
        finally:
            handle.remove()


def patch_4dnex(model, layers: list[LoraLayer], strength: float, embeddings: torch.Tensor | None):
    """A clone of the MODEL with the 4DNeX LoRA, shared RoPE and (when given) the domain embeddings [2, D]."""
    patcher_extension = comfy.require("comfy.patcher_extension", "WrappersMP")
    patched = model.clone()
    if layers:
        add_lora_patches(patched, layers, strength)
    diffusion_model = patched.get_model_object("diffusion_model")
    original = patched.get_model_object("diffusion_model.rope_encode")
    if isinstance(original, SharedRopeEncode):
        raise ValueError("This MODEL already has the 4DNeX patch; connect the Wan model loader's output instead.")
    patched.add_object_patch("diffusion_model.rope_encode", SharedRopeEncode(original, diffusion_model.patch_size))
    if embeddings is not None:
        patched.remove_wrappers_with_key(patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
        patched.add_wrapper_with_key(patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                     DomainEmbeddingWrapper(embeddings.float()))
    return patched
