"""Text and image encoding into ComfyUI's own CONDITIONING and CLIP_VISION_OUTPUT types."""

from __future__ import annotations

import torch

from fourdnex_core.encoders import encode_image, encode_prompt, with_pointmap_style
from fourdnex_core.presets import WAN_NEGATIVE_PROMPT

from . import comfy_bridge as comfy
from .comfy_values import ClipVisionOutput, conditioning


class FourDNeXTextEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("UMT5", {"tooltip": "From 4DNeX Text Encoder Loader."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                "tooltip": "What the scene shows and how it moves. For the negative prompt leave "
                                           "it empty, as the release does (Wan's own negative prompt is in the "
                                           "node's description)."}),
            "pointmap_style": ("BOOLEAN", {"default": True,
                                           "tooltip": "Append ' POINTMAP_STYLE.', as the 4DNeX release does for "
                                                      "every prompt. Turn off for the negative prompt."}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "4DNeX/conditioning"
    DESCRIPTION = ("Encodes a prompt with UMT5-XXL into Wan's 512-token text embeddings, as a CONDITIONING "
                   "(ComfyUI's CLIPTextEncode with a 'wan' CLIPLoader works too; add POINTMAP_STYLE. yourself). "
                   "The release's negative prompt is the empty text (pointmap_style off). Wan2.1's default "
                   "negative prompt, to paste instead: " + WAN_NEGATIVE_PROMPT)

    def encode(self, text_encoder, text, pointmap_style):
        prompt = with_pointmap_style(text, enabled=pointmap_style)
        with comfy.on_compute_device(text_encoder.model):
            embeds = encode_prompt(text_encoder.model, text_encoder.tokenizer, [prompt], device="cpu",
                                   dtype=torch.float32)
        return (conditioning(embeds),)


class FourDNeXCLIPVisionEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_vision": ("CLIP_VISION_4DNEX", {"tooltip": "From 4DNeX CLIP Vision Loader."}),
            "image": ("IMAGE", {"tooltip": "The input image (the first of a batch is used); the CLIP processor "
                                           "resizes and centre-crops it to 224 x 224."}),
        }}

    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    FUNCTION = "encode"
    CATEGORY = "4DNeX/conditioning"
    DESCRIPTION = ("CLIP ViT-H/14 penultimate hidden states of the image [1, 257, 1280], as a CLIP_VISION_OUTPUT "
                   "(ComfyUI's CLIPVisionEncode output works in the sampler too).")

    def encode(self, clip_vision, image):
        with comfy.on_compute_device(clip_vision.model):
            states = encode_image(clip_vision.model, clip_vision.processor, image[:1, ..., :3], device="cpu",
                                  dtype=torch.float32)
        return (ClipVisionOutput(penultimate_hidden_states=states),)


NODE_CLASS_MAPPINGS = {
    "FourDNeXTextEncode": FourDNeXTextEncode,
    "FourDNeXCLIPVisionEncode": FourDNeXCLIPVisionEncode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FourDNeXTextEncode": "4DNeX Text Encode (UMT5)",
    "FourDNeXCLIPVisionEncode": "4DNeX CLIP Vision Encode",
}
