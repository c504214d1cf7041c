"""XYZ init, the width-fused 4DNeX sampler, and the split-aware decode."""

from __future__ import annotations

from fourdnex_core.comfy_types import PointMaps, image_embeds, text_embeds, xyz_image
from fourdnex_core.conditioning import encode_condition
from fourdnex_core.decode import decode_wide_latent
from fourdnex_core.image_io import fit_image, image_to_tensor
from fourdnex_core.lowvram import sampling_transformer
from fourdnex_core.representation import check_video_size, xyz_init_map
from fourdnex_core.sampler import Conditioning, SamplingSettings, sample
from fourdnex_core.schedulers import DEFAULT_FLOW_SHIFT, SAMPLERS

from . import comfy_bridge as comfy

MAX_SIDE = 2048
SIZE = {"min": 16, "max": MAX_SIDE, "step": 16}


class FourDNeXXYZInit:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 720, **SIZE, "tooltip": "Width of one modality in pixels (multiple of 16)."}),
            "height": ("INT", {"default": 480, **SIZE, "tooltip": "Height in pixels (multiple of 16)."}),
        }}

    RETURN_TYPES = ("POINTMAPS", "IMAGE")
    RETURN_NAMES = ("xyz_init", "xyz_image")
    FUNCTION = "make"
    CATEGORY = "4DNeX/sampling"
    DESCRIPTION = ("The first frame's XYZ guess, a sloped plane (paper eq. 6): x and y follow the pixel grid, "
                   "z is far at the top and near at the bottom. The image shows XYZ as colours, (xyz + 1) / 2.")

    def make(self, width, height):
        xyz = xyz_init_map(height, width)[None]  # [1, H, W, 3]
        return (PointMaps(xyz=xyz), xyz_image(xyz))


class FourDNeXSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("FOURDNEX_MODEL", {"tooltip": "From 4DNeX Model Loader (LoRA applied)."}),
                "vae": ("WAN_VAE", {"tooltip": "Encodes the first frame (image + XYZ init) into the condition."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt: 4DNeX Text Encode, or CLIPTextEncode with "
                                                         "a 'wan' CLIPLoader (end the text with POINTMAP_STYLE.)."}),
                "clip_vision_output": ("CLIP_VISION_OUTPUT", {
                    "tooltip": "The image's CLIP embedding: 4DNeX CLIP Vision Encode or CLIPVisionEncode."}),
                "image": ("IMAGE", {"tooltip": "The input image; resized to cover width x height and centre-cropped."}),
                "width": ("INT", {"default": 720, **SIZE, "tooltip": "Width of one modality (the fused video is twice "
                                                                     "as wide); multiple of 16."}),
                "height": ("INT", {"default": 480, **SIZE, "tooltip": "Height; multiple of 16."}),
                "length": ("INT", {"default": 49, "min": 1, "max": 257, "step": 4,
                                   "tooltip": "Frames, 4k+1 (49 in the release)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "Denoising steps (release: 50)."}),
                "cfg": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance (release: 5); 1 skips the negative pass."}),
                "shift": ("FLOAT", {"default": DEFAULT_FLOW_SHIFT, "min": 0.01, "max": 100.0, "step": 0.01,
                                    "tooltip": "Flow shift of the schedule (Wan 480p: 3)."}),
                "scheduler": (list(SAMPLERS), {"default": "unipc",
                                               "tooltip": "unipc (Wan's own) or euler, on flow sigmas."}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Noise seed; the noise is drawn on the CPU, so a seed gives the same "
                                            "result on every device."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt for guidance (Wan's default is in the "
                                                         "4DNeX Text Encode description); none disables CFG."}),
                "xyz_init": ("POINTMAPS", {"tooltip": "First-frame XYZ guess of the same size; the sloped plane when "
                                                      "not connected."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "4DNeX/sampling"
    DESCRIPTION = ("Generates the wide 6D latent (RGB left, XYZ right, side by side in width) with the 4DNeX LoRA "
                   "on Wan2.1 I2V. Decode it with 4DNeX Decode.")

    def sample(self, model, vae, positive, clip_vision_output, image, width, height, length, steps, cfg, shift,
               scheduler, seed, negative=None, xyz_init=None, unique_id=None):
        check_video_size(length, height, width)
        picture = fit_image(image_to_tensor(image[:1]), height, width)  # [3, H, W]
        init = xyz_init_map(height, width) if xyz_init is None else xyz_init.xyz[0]
        if tuple(init.shape[:2]) != (height, width):
            raise ValueError(f"The XYZ init is {init.shape[1]} x {init.shape[0]}, the video {width} x {height}; "
                             "set 4DNeX XYZ Init to the same width and height.")
        with comfy.on_compute_device(vae):
            condition = encode_condition(vae, picture, init, length, progress=False)
        conditioning = Conditioning(
            condition=condition, prompt_embeds=text_embeds(positive), image_embeds=image_embeds(clip_vision_output),
            negative_prompt_embeds=text_embeds(negative) if negative is not None else None)
        settings = SamplingSettings(num_inference_steps=steps, guidance_scale=cfg, flow_shift=shift,
                                    sampler=scheduler, seed=seed)
        progress = comfy.Progress(steps, unique_id)
        transformer = sampling_transformer(model.transformer, model.memory, steps)  # the step cache, when on
        with comfy.transformer_on_compute_device(model) as device:
            latent = sample(transformer, conditioning, settings, dtype=model.dtype, device=device,
                            on_step=lambda index, total, _: progress.step(index + 1),
                            should_cancel=lambda: comfy.throw_if_interrupted() or False, progress=False)
        return ({"samples": latent.cpu()},)


class FourDNeXDecode:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("WAN_VAE", {"tooltip": "The Wan VAE (the same as for sampling)."}),
                "samples": ("LATENT", {"tooltip": "The wide latent from 4DNeX Sampler."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("IMAGE", "POINTMAPS", "IMAGE")
    RETURN_NAMES = ("rgb_frames", "point_maps", "xyz_frames")
    FUNCTION = "decode"
    CATEGORY = "4DNeX/sampling"
    DESCRIPTION = ("Splits the wide latent, de-normalizes its XYZ half (x = x_hat * 1.70 - 0.13) and decodes: "
                   "RGB frames as an IMAGE batch (for any video node), the XYZ point maps, and XYZ as colours.")

    def decode(self, vae, samples, unique_id=None):
        latent = samples["samples"]
        if latent.ndim != 5 or latent.shape[-1] % 2:
            raise ValueError(f"This latent {tuple(latent.shape)} is not a 4DNeX wide latent [1, 16, f, h, 2w]; "
                             "connect the output of 4DNeX Sampler.")
        progress = comfy.Progress(latent.shape[2], unique_id)
        with comfy.on_compute_device(vae), comfy.progress_per_call(vae.decoder, progress):
            decoded = decode_wide_latent(vae, latent, progress=False)
        rgb, xyz = decoded.rgb.cpu().float(), decoded.xyz.cpu().float()
        return (rgb, PointMaps(xyz=xyz, rgb=rgb), xyz_image(xyz))


NODE_CLASS_MAPPINGS = {
    "FourDNeXXYZInit": FourDNeXXYZInit,
    "FourDNeXSampler": FourDNeXSampler,
    "FourDNeXDecode": FourDNeXDecode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FourDNeXXYZInit": "4DNeX XYZ Init (sloped plane)",
    "FourDNeXSampler": "4DNeX Sampler",
    "FourDNeXDecode": "4DNeX Decode (XYZ de-normalize)",
}
