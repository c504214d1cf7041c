"""4DNeX on ComfyUI's own Wan2.1 I2V model: MODEL patch, conditioning, decode and the release's sigmas.

The native path: ``UNETLoader`` (or a GGUF loader) -> **4DNeX Apply to Wan Model** -> ``ModelSamplingSD3``
-> ``SamplerCustom`` (with **4DNeX Release Schedule**'s sigmas and sampler) or ``KSampler``, conditioned by **4DNeX Wan
Image to Video** on ``CLIPTextEncode`` (``CLIPLoader`` type wan), ``CLIPVisionEncode`` and the core
``VAE``, decoded by **4DNeX Wan Decode**. The representation code (XYZ init, condition video and
mask, de-normalization, RoPE sharing, domain embeddings) is the library's, shared with the pack's
own model stack; :mod:`.native_patch` installs it on the MODEL.
"""

from __future__ import annotations

import functools

import torch

from fourdnex_core.geometry.point_maps import PointMaps
from fourdnex_core.representation import xyz_image
from fourdnex_core.decode import split_decoded_frames
from fourdnex_core.image_io import RESIZE_MODES, fit_image, image_to_tensor
from fourdnex_core.loading.wan_keys import original_to_diffusers
from fourdnex_core.model_set import read_4dnex_lora
from fourdnex_core.representation import (
    SPATIAL_COMPRESSION,
    check_video_size,
    condition_frames,
    denormalize_xyz_raw_latent,
    generation_mask,
    latent_frames,
    xyz_init_map,
)
from fourdnex_core.presets import RELEASE
from fourdnex_core.sampler import run_schedule
from fourdnex_core.schedulers import NUM_TRAIN_TIMESTEPS, SAMPLERS, SCHEDULES, flow_sigmas, scheduler_for
from fourdnex_core.vae_io import wan_latent_stats

from . import comfy_bridge as comfy
from .native_patch import check_wan21_i2v, patch_4dnex
from .sampling import SIZE

AUTO = "auto"


def _native_linear_names(model) -> set[str]:
    """The MODEL's Linear module paths in diffusers names, to resolve and check the LoRA's layers against."""
    names = set()
    for key in model.model.diffusion_model.state_dict():
        if key.endswith(".weight"):
            mapped = original_to_diffusers(key.removesuffix(".weight"))
            if mapped is not None:
                names.add(mapped)
    return names


class FourDNeXApplyToWanModel:
    @classmethod
    def INPUT_TYPES(cls):
        loras = comfy.filename_list("loras")
        return {"required": {
            "model": ("MODEL", {"tooltip": "ComfyUI's Wan2.1 I2V 14B 480p model: UNETLoader (bf16, fp16, fp8, "
                                           "fp8_scaled) or a GGUF loader."}),
            "lora_name": ([n for n in loras if n.endswith(".safetensors")], {
                "tooltip": "The 4DNeX LoRA in models/loras: the released pytorch_lora_weights.safetensors "
                           "(keep learnable_domain_embeddings.pt beside it) or a file made by `fourdnex convert-lora`."}),
            "domain_embeddings": ([AUTO] + [n for n in loras if n.endswith(".pt")], {
                "tooltip": "The RGB/XYZ domain embeddings. 'auto': inside the LoRA file or "
                           "learnable_domain_embeddings.pt beside it."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                   "tooltip": "Scale of the LoRA update; 1.0 is its training scale (the release)."}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "4DNeX/native"
    DESCRIPTION = ("Makes ComfyUI's Wan2.1 I2V model a 4DNeX model: the LoRA as ComfyUI weight patches (works on "
                   "bf16, fp16, fp8 and GGUF weights), shared rotary positions for the RGB and XYZ halves and the two "
                   "domain embeddings. Other model patches (more LoRAs, ModelSamplingSD3) keep working.")

    def patch(self, model, lora_name, domain_embeddings, strength):
        check_wan21_i2v(model, width=None)
        embeddings_path = None if domain_embeddings == AUTO else comfy.full_path("loras", domain_embeddings)
        layers, embeddings = read_4dnex_lora(comfy.full_path("loras", lora_name), embeddings_path,
                                             _native_linear_names(model))
        # the model width: the embeddings', or the input width of a self-attention projection
        widths = [layer.down.shape[1] for layer in layers if ".attn1." in layer.module]
        width = embeddings.shape[1] if embeddings is not None else (widths[0] if widths else None)
        check_wan21_i2v(model, width=width)
        return (patch_4dnex(model, layers, strength, embeddings),)


class FourDNeXWanImageToVideo:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "The prompt (CLIPTextEncode; end it with POINTMAP_STYLE.)."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt; the release uses the empty prompt."}),
                "vae": ("VAE", {"tooltip": "The Wan2.1 VAE (VAELoader, wan_2.1_vae.safetensors)."}),
                "clip_vision_output": ("CLIP_VISION_OUTPUT", {"tooltip": "CLIPVisionEncode of the image "
                                                                         "(clip_vision_h, crop none)."}),
                "start_image": ("IMAGE", {"tooltip": "The input image (the first of a batch)."}),
                "width": ("INT", {"default": 720, **SIZE, "tooltip": "Width of one modality (the latent is twice "
                                                                     "as wide); multiple of 16."}),
                "height": ("INT", {"default": 480, **SIZE, "tooltip": "Height; multiple of 16."}),
                "length": ("INT", {"default": 49, "min": 1, "max": 257, "step": 4,
                                   "tooltip": "Frames, 4k+1 (49 in the release)."}),
                "resize": (list(RESIZE_MODES), {
                    "default": "area", "tooltip": "area: the image's aspect ratio at the area width x height (the "
                                                  "release); crop: cover and centre-crop; stretch: exactly that size."}),
            },
            "optional": {
                "xyz_init": ("POINTMAPS", {"tooltip": "First-frame XYZ guess of the generated size; the sloped plane "
                                                      "when not connected."}),
            },
        }

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "encode"
    CATEGORY = "4DNeX/native"
    DESCRIPTION = ("Like WanImageToVideo, for 4DNeX: the first frame is the image beside its XYZ guess, encoded with "
                   "the native VAE as one wide video; the mask keeps the RGB half and half-keeps the XYZ half (0.5). "
                   "Outputs the conditionings and an empty wide latent for KSampler / SamplerCustom.")

    def encode(self, positive, negative, vae, clip_vision_output, start_image, width, height, length, resize,
               xyz_init=None):
        check_video_size(length, height, width)
        node_helpers = comfy.require("node_helpers", "conditioning_set_values")
        picture = fit_image(image_to_tensor(start_image[:1]), height, width, mode=resize).permute(1, 2, 0)  # [h, w, 3]
        size = tuple(picture.shape[:2])
        init = xyz_init_map(*size) if xyz_init is None else xyz_init.xyz[0].float()
        if tuple(init.shape[:2]) != size:
            raise ValueError(f"The XYZ init is {init.shape[1]} x {init.shape[0]} but the image is generated at "
                             f"{size[1]} x {size[0]} ({resize}); make the XYZ init at that size.")
        concat_latent = vae.encode(condition_frames(picture, init, length))  # [1, 16, f, h/8, 2w/8], VAE space
        mask = generation_mask(length, concat_latent.shape[-2], concat_latent.shape[-1])
        values = {"concat_latent_image": concat_latent, "concat_mask": mask, "clip_vision_output": clip_vision_output}
        positive = node_helpers.conditioning_set_values(positive, values)
        negative = node_helpers.conditioning_set_values(negative, values)
        latent = torch.zeros(1, 16, latent_frames(length), size[0] // SPATIAL_COMPRESSION,
                             2 * size[1] // SPATIAL_COMPRESSION)
        return (positive, negative, {"samples": latent})


class FourDNeXWanDecode:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "The Wan2.1 VAE (the one the conditioning used)."}),
                "samples": ("LATENT", {"tooltip": "The wide latent from KSampler / SamplerCustom."}),
                "tiled": ("BOOLEAN", {"default": False, "tooltip": "Decode in tiles (ComfyUI's VAEDecodeTiled) to "
                                                                   "save memory."}),
            },
            "optional": {
                "tile_size": ("INT", {"default": 256, "min": 64, "max": 4096, "step": 32,
                                      "tooltip": "Tile side in pixels (when tiled), as VAEDecodeTiled."}),
                "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32,
                                    "tooltip": "Tile overlap in pixels (when tiled)."}),
                "temporal_size": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 4,
                                          "tooltip": "Frames per tile (when tiled)."}),
                "temporal_overlap": ("INT", {"default": 8, "min": 4, "max": 4096, "step": 4,
                                             "tooltip": "Frames of overlap between tiles (when tiled)."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "POINTMAPS", "IMAGE")
    RETURN_NAMES = ("rgb_frames", "point_maps", "xyz_frames")
    FUNCTION = "decode"
    CATEGORY = "4DNeX/native"
    DESCRIPTION = ("De-normalizes the XYZ half of the wide latent (x = x_hat * 1.70 - 0.13, in Wan's normalized "
                   "space), decodes it with the native VAE and splits it: RGB frames (IMAGE), the XYZ point maps "
                   "(for 4DNeX Post-Optimize and the point-cloud nodes) and XYZ as colours.")

    def decode(self, vae, samples, tiled, tile_size=256, overlap=64, temporal_size=64, temporal_overlap=8):
        latent = samples["samples"]
        if latent.ndim != 5 or latent.shape[-1] % 2:
            raise ValueError(f"This latent {tuple(latent.shape)} is not a 4DNeX wide latent [1, 16, f, h, 2w]; "
                             "connect the sampler that took 4DNeX Wan Image to Video's latent.")
        if not torch.isfinite(latent).all():
            raise ValueError("The latent holds NaN or infinite values, so there is nothing to decode: the sampler "
                             "diverged (fp16 overflow: load the model in bf16; an extreme cfg) or the MODEL's weights or "
                             "LoRA hold NaN.")
        core = comfy.require("nodes", "VAEDecodeTiled")
        wide = {"samples": denormalize_xyz_raw_latent(latent, *wan_latent_stats())}
        if tiled:
            (frames,) = core.VAEDecodeTiled().decode(vae, wide, tile_size, overlap, temporal_size, temporal_overlap)
        else:
            (frames,) = core.VAEDecode().decode(vae, wide)
        if not torch.isfinite(frames).all():
            bad = [i for i in range(frames.shape[0]) if not torch.isfinite(frames[i]).all()]
            raise ValueError(f"The VAE decoded NaN or infinite values (frames {bad[:8]}) from a finite latent: its "
                             "weights or precision (fp16 overflows: load it in bf16 or fp32) are at fault.")
        decoded = split_decoded_frames(frames.cpu())
        return (decoded.rgb, PointMaps(xyz=decoded.xyz, rgb=decoded.rgb), xyz_image(decoded.xyz))


def release_sample(settings: tuple[str, int, float, str], model, x, sigmas, extra_args=None, callback=None,
                   disable=None):
    """A ComfyUI sampler function (``KSAMPLER``'s ``sampler_function``) that steps as the pack's sampler does.

    ComfyUI hands it its denoiser ``model(x, sigma) -> x0`` (CFG inside) and ``x`` at ``sigmas[0]``.
    The model is called at the timestep the release gives its transformer (UniPC: the int64
    truncation of sigma * 1000, as a sigma t / 1000), the velocity recovered as
    ``(x - x0) / sigma`` (ComfyUI's flow models predict ``x0 = x - sigma * v``), and diffusers'
    stepper advances ``x`` on the release's sigmas through the library's
    :func:`~fourdnex_core.sampler.run_schedule`.
    """
    sampler, steps, shift, schedule = settings
    scheduler = scheduler_for(sampler, steps, shift, schedule, device=x.device)
    expected = scheduler.sigmas.to(sigmas)
    if sigmas.shape != expected.shape or not torch.allclose(sigmas, expected, atol=1e-6):
        raise ValueError(f"4DNeX Release Schedule's sampler steps through its own {steps} {schedule} sigmas (shift "
                         f"{shift}); the SIGMAS connected to the sampler node differ. Connect the same node's SIGMAS.")
    extra_args = extra_args or {}
    ones = x.new_ones(x.shape[0])
    timesteps = [float(t) for t in scheduler.timesteps]

    def velocity(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = float(t) / NUM_TRAIN_TIMESTEPS
        denoised = model(latents, sigma * ones, **extra_args)
        if callback is not None:  # ComfyUI's progress bar and previews
            index = timesteps.index(float(t))
            callback({"x": latents, "i": index, "sigma": sigmas[index], "sigma_hat": sigmas[index],
                      "denoised": denoised})
        return (latents - denoised) / sigma

    return run_schedule(velocity, x.float(), scheduler, source="the MODEL's prediction", progress=not disable)


class FourDNeXReleaseSchedule:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "steps": ("INT", {"default": RELEASE.steps, "min": 1, "max": 1000,
                              "tooltip": "Denoising steps (release: 50)."}),
            "shift": ("FLOAT", {"default": RELEASE.shift, "min": 0.01, "max": 100.0, "step": 0.01,
                                "tooltip": "Flow shift (Wan 480p and the release: 3.0)."}),
            "schedule": (list(SCHEDULES), {"default": RELEASE.schedule, "tooltip": "release: the 4DNeX release's flow "
                                                                              "sigmas; diffusers: newer diffusers'."}),
            "sampler": (list(SAMPLERS), {"default": RELEASE.sampler, "tooltip": "unipc: the release's UniPC; euler: "
                                                                            "first-order flow Euler."}),
        }}

    RETURN_TYPES = ("SIGMAS", "SAMPLER")
    RETURN_NAMES = ("sigmas", "sampler")
    FUNCTION = "schedule"
    CATEGORY = "4DNeX/native"
    DESCRIPTION = ("The release's noise schedule and sampler for SamplerCustom: shifted flow sigmas starting at "
                   "shift(0.999) = 0.999666, and a SAMPLER that steps through them as the release does (diffusers' "
                   "UniPC, the model called at the release's integer timesteps), step for step the pack's own "
                   "sampler. The SIGMAS also work with ComfyUI's own samplers (KSamplerSelect).")

    def schedule(self, steps, shift, schedule, sampler):
        samplers = comfy.require("comfy.samplers", "KSAMPLER")
        sampler_object = samplers.KSAMPLER(functools.partial(release_sample, (sampler, steps, shift, schedule)))
        return (flow_sigmas(steps, shift, schedule), sampler_object)


NODE_CLASS_MAPPINGS = {
    "FourDNeXApplyToWanModel": FourDNeXApplyToWanModel,
    "FourDNeXWanImageToVideo": FourDNeXWanImageToVideo,
    "FourDNeXWanDecode": FourDNeXWanDecode,
    "FourDNeXReleaseSchedule": FourDNeXReleaseSchedule,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FourDNeXApplyToWanModel": "4DNeX Apply to Wan Model (native)",
    "FourDNeXWanImageToVideo": "4DNeX Wan Image to Video (native)",
    "FourDNeXWanDecode": "4DNeX Wan Decode (native VAE)",
    "FourDNeXReleaseSchedule": "4DNeX Release Schedule (sigmas + sampler)",
}
