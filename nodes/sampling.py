"""XYZ init, the width-fused 4DNeX sampler, and the split-aware decode."""

from __future__ import annotations

from fourdnex_core.conditioning import encode_condition
from fourdnex_core.decode import decode_wide_latent
from fourdnex_core.geometry.point_maps import PointMaps
from fourdnex_core.image_io import RESIZE_MODES, fit_image, image_to_tensor, resize_point_map
from fourdnex_core.job_size import check_job_fits
from fourdnex_core.lowvram import sampling_transformer
from fourdnex_core.representation import check_video_size, xyz_image, xyz_init_map
from fourdnex_core.sampler import Conditioning, SamplingSettings, sample
from fourdnex_core.presets import RELEASE
from fourdnex_core.schedulers import SAMPLERS, SCHEDULES

from . import comfy_bridge as comfy
from .comfy_values import image_embeds, text_embeds

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
                "image": ("IMAGE", {"tooltip": "The input image, fitted to width x height as 'resize' says."}),
                "width": ("INT", {"default": RELEASE.width, **SIZE,
                                  "tooltip": "Width of one modality (the fused video is twice as wide); multiple of "
                                             "16. With resize 'area', width x height is the area to keep."}),
                "height": ("INT", {"default": RELEASE.height, **SIZE, "tooltip": "Height; multiple of 16."}),
                "length": ("INT", {"default": RELEASE.frames, "min": 1, "max": 257, "step": 4,
                                   "tooltip": "Frames, 4k+1 (49 in the release)."}),
                "steps": ("INT", {"default": RELEASE.steps, "min": 1, "max": 1000,
                                  "tooltip": "Denoising steps (release: 50)."}),
                "cfg": ("FLOAT", {"default": RELEASE.cfg, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance (release: 5, against the empty negative); "
                                             "above 1 needs 'negative' connected; 1 skips the negative pass."}),
                "shift": ("FLOAT", {"default": RELEASE.shift, "min": 0.01, "max": 100.0, "step": 0.01,
                                    "tooltip": "Flow shift of the schedule (Wan 480p and the release: 3)."}),
                "scheduler": (list(SAMPLERS), {"default": RELEASE.sampler,
                                               "tooltip": "unipc (Wan's own, the release's) or euler, on flow "
                                                          "sigmas."}),
                "seed": ("INT", {"default": RELEASE.seed, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "control_after_generate": True,
                                 "tooltip": "Noise seed (release: 42); the noise is drawn on the CPU, so a seed "
                                            "gives the same result on every device."}),
                "resize": (list(RESIZE_MODES), {
                    "default": RELEASE.resize,
                    "tooltip": "area (the release's): the image's aspect ratio at the area width x height, no crop "
                               "(a square image gives 576 x 576 at 720 x 480); crop: cover width x height and "
                               "centre-crop; stretch: exactly width x height."}),
                "schedule": (list(SCHEDULES), {
                    "default": RELEASE.schedule,
                    "tooltip": "release: the sigmas the 4DNeX release ran (diffusers 0.34); diffusers: those of "
                               "diffusers 0.37 and later."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt for guidance: the release's is the "
                                                         "empty text (4DNeX Text Encode of '', pointmap_style off). "
                                                         "Needed when cfg is above 1."}),
                "xyz_init": ("POINTMAPS", {"tooltip": "First-frame XYZ guess, resampled to the video size; the "
                                                      "sloped plane when not connected."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "4DNeX/sampling"
    DESCRIPTION = ("Generates the wide 6D latent (RGB left, XYZ right, side by side in width) with the 4DNeX LoRA "
                   "on Wan2.1 I2V. Decode it with 4DNeX Decode.")

    def sample(self, model, vae, positive, clip_vision_output, image, width, height, length, steps, cfg, shift,
               scheduler, seed, resize=RELEASE.resize, schedule=RELEASE.schedule, negative=None, xyz_init=None,
               unique_id=None):
        check_video_size(length, height, width)
        settings = SamplingSettings(num_inference_steps=steps, guidance_scale=cfg, flow_shift=shift,
                                    sampler=scheduler, seed=seed, schedule=schedule)
        if settings.uses_cfg and negative is None:
            raise ValueError(f"cfg {cfg} needs a negative prompt: connect a 4DNeX Text Encode of the empty text "
                             "(the release's negative, pointmap_style off) to the sampler's 'negative' input, or "
                             "set cfg to 1 to sample without guidance.")
        picture = fit_image(image_to_tensor(image[:1]), height, width, resize)  # [3, h, w]
        height, width = picture.shape[-2:]
        config = model.transformer.config
        check_job_fits(length, height, width, device=comfy.torch_device(), dtype=model.dtype, ffn_dim=config.ffn_dim,
                       inner_dim=config.num_attention_heads * config.attention_head_dim)
        init = xyz_init_map(height, width) if xyz_init is None else resize_point_map(xyz_init.xyz[0], height, width)
        with comfy.on_compute_device(vae):
            condition = encode_condition(vae, picture, init, length, progress=False)
        conditioning = Conditioning(
            condition=condition, prompt_embeds=text_embeds(positive), image_embeds=image_embeds(clip_vision_output),
            negative_prompt_embeds=text_embeds(negative) if negative is not None else None)
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
