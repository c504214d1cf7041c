"""Loaders: the 4DNeX transformer (+ LoRA), the Wan VAE, UMT5 and CLIP vision, from ComfyUI's model folders."""

from __future__ import annotations

from fourdnex_core.devices import DTYPES
from fourdnex_core.loading.clip_vision_loader import load_clip_vision
from fourdnex_core.loading.text_encoder_loader import load_text_encoder, text_encoder_precision
from fourdnex_core.loading.transformer_loader import load_transformer
from fourdnex_core.loading.vae_loader import load_vae
from fourdnex_core.lowvram import LowVramOptions, apply_model_options, prepare_vae
from fourdnex_core.model_set import apply_4dnex_lora
from fourdnex_core.transformer import FourDNeXTransformer3DModel

from . import comfy_bridge as comfy
from .comfy_values import FourDNeXModel, ImageEncoder, TextEncoder

PRECISIONS = ["auto", *DTYPES]
NONE = "none"
AUTO = "auto"
DIFFUSERS_PREFIX = "diffusers/"


def _transformer_choices() -> list[str]:
    return comfy.filename_list("diffusion_models") + [DIFFUSERS_PREFIX + n for n in comfy.folder_list("diffusers")]


class FourDNeXModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (_transformer_choices(), {
                    "tooltip": "The Wan2.1 I2V 14B 480p transformer: a file in models/diffusion_models "
                               "(bf16, fp16 or fp8) or a diffusers folder in models/diffusers."}),
                "lora_name": ([NONE] + comfy.filename_list("loras"), {
                    "tooltip": "The 4DNeX LoRA in models/loras: the released pytorch_lora_weights.safetensors "
                               "(keep learnable_domain_embeddings.pt beside it) or a file made by "
                               "`fourdnex convert-lora`. 'none' runs the base Wan model (no XYZ)."}),
                "domain_embeddings": ([AUTO] + [n for n in comfy.filename_list("loras") if n.endswith(".pt")], {
                    "tooltip": "The 4DNeX RGB/XYZ domain embeddings. 'auto': the ones inside the LoRA file "
                               "or learnable_domain_embeddings.pt beside it."}),
                "lora_strength": ("FLOAT", {
                    "default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                    "tooltip": "Scale of the LoRA update; 1.0 is its training scale (the release's fuse at 0.5)."}),
                "precision": (PRECISIONS, {
                    "default": "auto",
                    "tooltip": "Compute precision. auto: bf16 on a GPU, fp32 on the CPU. fp8 files keep fp8 weights."}),
            },
            "optional": {
                "memory": ("FOURDNEX_MEMORY", {
                    "tooltip": "From 4DNeX Memory Options: block swap, fp8, attention kernel, compile, step cache. "
                               "Not connected: the whole model on the GPU, exact."}),
            },
        }

    RETURN_TYPES = ("FOURDNEX_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    CATEGORY = "4DNeX/loaders"
    DESCRIPTION = ("Loads the Wan2.1 image-to-video 14B transformer with the 4DNeX changes (shared RoPE, "
                   "domain embeddings) and applies the 4DNeX LoRA (fused; attached unfused to fp8 weights).")

    def load(self, model_name, lora_name, domain_embeddings, lora_strength, precision, memory=None):
        memory = memory or LowVramOptions()
        dtype = comfy.precision(precision)
        source = comfy.diffusers_folder(model_name.removeprefix(DIFFUSERS_PREFIX)) \
            if model_name.startswith(DIFFUSERS_PREFIX) else comfy.full_path("diffusion_models", model_name)
        transformer = load_transformer(source, model_cls=FourDNeXTransformer3DModel, dtype=dtype,
                                       device=comfy.offload_device())
        lora = None
        if lora_name != NONE:
            lora = comfy.full_path("loras", lora_name)
            embeddings = None if domain_embeddings == AUTO else comfy.full_path("loras", domain_embeddings)
            apply_4dnex_lora(transformer, lora, domain_embeddings=embeddings, strength=lora_strength)
        # after the LoRA: a LoRA fused into 16-bit weights is quantized with them when fp8 is asked for
        apply_model_options(transformer, memory, comfy.torch_device())
        return (FourDNeXModel(transformer, dtype, lora_name if lora else None, lora_strength if lora else 0.0,
                              memory),)


class FourDNeXVAELoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"vae_name": (comfy.filename_list("vae"), {
                "tooltip": "The Wan2.1 VAE in models/vae (wan_2.1_vae.safetensors)."})},
            "optional": {"memory": ("FOURDNEX_MEMORY", {
                "tooltip": "From 4DNeX Memory Options: its VAE tiling settings are used."})},
        }

    RETURN_TYPES = ("WAN_VAE",)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"
    CATEGORY = "4DNeX/loaders"
    DESCRIPTION = "Loads the Wan2.1 video VAE (fp32) that encodes the condition and decodes the wide RGB+XYZ video."

    def load(self, vae_name, memory=None):
        vae = load_vae(comfy.full_path("vae", vae_name), device=comfy.offload_device())
        if memory is not None:
            prepare_vae(vae, memory)
        return (vae,)


class FourDNeXTextEncoderLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder_name": (comfy.filename_list("text_encoders"), {
                "tooltip": "UMT5-XXL in models/text_encoders (umt5_xxl_fp16 or fp8_e4m3fn_scaled); its "
                           "tokenizer is read from the file."}),
            "precision": (PRECISIONS, {"default": "auto", "tooltip": "auto: bf16 on a GPU; on the CPU bf16 too "
                                       "unless the file is fp32 (UMT5-XXL: 11 GB in bf16, 22.7 GB in fp32)."}),
        }}

    RETURN_TYPES = ("UMT5",)
    RETURN_NAMES = ("text_encoder",)
    FUNCTION = "load"
    CATEGORY = "4DNeX/loaders"
    DESCRIPTION = "Loads the UMT5-XXL text encoder and its tokenizer for 4DNeX Text Encode."

    def load(self, text_encoder_name, precision):
        path = comfy.full_path("text_encoders", text_encoder_name)
        model, tokenizer = load_text_encoder(path, dtype=text_encoder_precision(precision, comfy.torch_device(), path),
                                             device=comfy.offload_device())
        return (TextEncoder(model, tokenizer),)


class FourDNeXCLIPVisionLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_name": (comfy.filename_list("clip_vision"), {
                "tooltip": "CLIP ViT-H/14 in models/clip_vision (clip_vision_h.safetensors)."}),
            "precision": (PRECISIONS, {"default": "auto", "tooltip": "auto: fp16/bf16 on a GPU, fp32 on the CPU."}),
        }}

    RETURN_TYPES = ("CLIP_VISION_4DNEX",)
    RETURN_NAMES = ("clip_vision",)
    FUNCTION = "load"
    CATEGORY = "4DNeX/loaders"
    DESCRIPTION = "Loads the CLIP ViT-H/14 image encoder (and its processor) for 4DNeX CLIP Vision Encode."

    def load(self, clip_name, precision):
        model, processor = load_clip_vision(comfy.full_path("clip_vision", clip_name),
                                            dtype=comfy.precision(precision), device=comfy.offload_device())
        return (ImageEncoder(model, processor),)


NODE_CLASS_MAPPINGS = {
    "FourDNeXModelLoader": FourDNeXModelLoader,
    "FourDNeXVAELoader": FourDNeXVAELoader,
    "FourDNeXTextEncoderLoader": FourDNeXTextEncoderLoader,
    "FourDNeXCLIPVisionLoader": FourDNeXCLIPVisionLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FourDNeXModelLoader": "4DNeX Model Loader (Wan2.1 I2V + LoRA)",
    "FourDNeXVAELoader": "4DNeX VAE Loader",
    "FourDNeXTextEncoderLoader": "4DNeX Text Encoder Loader (UMT5)",
    "FourDNeXCLIPVisionLoader": "4DNeX CLIP Vision Loader",
}
