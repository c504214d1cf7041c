"""The width-fused image-to-video denoising loop.

The loop sees the transformer only as a callable with ``WanTransformer3DModel``'s forward
signature, so a block-swap or offload wrapper can stand in for it without touching this file.
It returns the wide latent; :mod:`fourdnex_core.decode` turns that into RGB and XYZ frames.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from .schedulers import DEFAULT_FLOW_SHIFT, SAMPLERS, SCHEDULES, scheduler_for

StepCallback = Callable[[int, int, torch.Tensor], None]
"""Called after every step with (step index starting at 0, total steps, latents [1, 16, f, h, 2w])."""


class SamplingCancelled(RuntimeError):
    """Raised when the ``should_cancel`` hook asks the loop to stop."""


class NonFiniteLatentError(RuntimeError):
    """The latent (or an input of the loop) became NaN or infinite; the message says where."""


MAX_SEED = 2**64 - 1


@dataclasses.dataclass
class SamplingSettings:
    """The sampler's knobs, named as in diffusers' Wan pipelines. Defaults are the release's call
    (tests/test_release_defaults.py holds them to it).

    guidance_scale: CFG runs when it is above 1 (as in diffusers' Wan pipelines); 1 or below
        samples with the prompt only. schedule: "release" (diffusers 0.34's flow sigmas, what the
        release ran) or "diffusers" (those of diffusers >= 0.37); see :mod:`.schedulers`.
    """

    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    flow_shift: float = DEFAULT_FLOW_SHIFT
    sampler: str = "unipc"
    seed: int = 42
    schedule: str = "release"

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {self.num_inference_steps}.")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a number >= 0 (1.0 disables CFG), got {self.guidance_scale}.")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in 0 .. 2**64 - 1, got {self.seed}.")
        if not (math.isfinite(self.flow_shift) and self.flow_shift > 0):
            raise ValueError(f"flow_shift must be positive, got {self.flow_shift}; Wan2.1 480p uses 3.0, 720p 5.0.")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"Unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)} "
                             "(\"release\" is what the 4DNeX release ran).")

    @property
    def uses_cfg(self) -> bool:
        """Whether a step runs the negative pass too (guidance above 1)."""
        return self.guidance_scale > 1.0


@dataclasses.dataclass
class Conditioning:
    """Everything the transformer is conditioned on, for a batch of one.

    condition: [1, 20, f, h, 2w] mask (4 channels) + VAE-encoded condition video (16 channels).
    prompt_embeds / negative_prompt_embeds: [1, 512, text_dim] UMT5 states (exactly 512 tokens:
        Wan's image-to-video attention splits the context at 512 text tokens). The release's
        negative is the empty prompt "" encoded (not None); None only for guidance <= 1.
    image_embeds: [1, 257, image_dim] CLIP vision penultimate states.
    """

    condition: torch.Tensor
    prompt_embeds: torch.Tensor
    image_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("prompt_embeds", "negative_prompt_embeds"):
            embeds = getattr(self, name)
            if embeds is not None and embeds.shape[1] != 512:
                raise ValueError(
                    f"{name} must hold exactly 512 tokens (Wan pads text to 512), got {embeds.shape[1]}; "
                    "encode the prompt with fourdnex_core.encoders.encode_prompt."
                )
        if self.condition.ndim != 5:
            raise ValueError(f"condition must be [1, 20, f, h, 2w], got {tuple(self.condition.shape)}.")


def initial_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Gaussian noise drawn on the CPU from ``seed``: the same on every device."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


@torch.no_grad()
def sample(
    transformer: Callable[..., torch.Tensor],
    conditioning: Conditioning,
    settings: SamplingSettings | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    latents: torch.Tensor | None = None,
    on_step: StepCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Denoise a wide 6D latent with classifier-free guidance.

    Args:
        transformer: a module with ``WanTransformer3DModel``'s forward (usually a
            :class:`~fourdnex_core.transformer.FourDNeXTransformer3DModel`).
        conditioning: condition latent and embeddings.
        settings: steps, guidance, shift, sampler, schedule, seed.
        dtype: the transformer's compute dtype (fp32 on CPU, bf16 on CUDA).
        device: where the latents live during the loop.
        latents: optional starting noise [1, 16, f, h, 2w]; drawn from ``settings.seed`` if None.
        on_step: progress hook; should_cancel: returns True to stop (raises SamplingCancelled).
    Returns:
        The denoised wide latent [1, 16, f, h, 2w], float32, in Wan's normalized latent space
        (XYZ half still normalized with the 4DNeX statistics).
    """
    settings = settings or SamplingSettings()
    condition = conditioning.condition.to(device=device, dtype=torch.float32)
    shape = (condition.shape[0], 16, *condition.shape[2:])
    latents = initial_noise(shape, settings.seed) if latents is None else latents.float()
    latents = latents.to(device)
    if tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape} to match the condition, got {tuple(latents.shape)}.")

    prompt_embeds = conditioning.prompt_embeds.to(device=device, dtype=dtype)
    image_embeds = conditioning.image_embeds.to(device=device, dtype=dtype)
    use_cfg = settings.uses_cfg
    if use_cfg and conditioning.negative_prompt_embeds is None:
        raise ValueError(f"Guidance {settings.guidance_scale} needs negative prompt embeddings: encode the empty "
                         "prompt \"\" (the release's negative) or another negative, or set guidance to 1 to "
                         "sample without classifier-free guidance.")
    negative_embeds = conditioning.negative_prompt_embeds.to(device=device, dtype=dtype) if use_cfg else None
    _check_inputs_finite(condition=condition, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
                         image_embeds=image_embeds, latents=latents)

    scheduler = scheduler_for(settings.sampler, settings.num_inference_steps, settings.flow_shift,
                              settings.schedule, device=device)

    def velocity(model_input: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return transformer(
            hidden_states=model_input,
            timestep=timestep,
            encoder_hidden_states=text,
            encoder_hidden_states_image=image_embeds,
            return_dict=False,
        )[0]

    def guided_velocity(current: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model_input = torch.cat([current, condition], dim=1).to(dtype)
        timestep = t.expand(current.shape[0])
        prediction = velocity(model_input, timestep, prompt_embeds)
        if use_cfg:
            unconditional = velocity(model_input, timestep, negative_embeds)
            prediction = unconditional + settings.guidance_scale * (prediction - unconditional)
        return prediction

    source = (f"the transformer's prediction (its inputs were finite): its weights or the LoRA hold NaN, or {dtype} "
              f"overflows (fp16: use bf16), or guidance {settings.guidance_scale} is extreme")
    return run_schedule(guided_velocity, latents, scheduler, source=source, on_step=on_step,
                        should_cancel=should_cancel, progress=progress)


def run_schedule(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    scheduler: SchedulerMixin,
    *,
    source: str = "the model's prediction",
    on_step: StepCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Step ``latents`` through a prepared flow ``scheduler`` (see :func:`~.schedulers.scheduler_for`).

    Args:
        velocity: (latents [B, 16, f, h, w], timestep t as the scheduler gives it) -> the velocity,
            same shape; the pack's guided transformer, or a ComfyUI denoiser turned into one.
        latents: the starting latents, float32 (pure noise at the first sigma).
        source: where a non-finite velocity came from, for the error message.
    Returns:
        The latents after the last step, float32.
    """
    timesteps = scheduler.timesteps
    for index, t in enumerate(tqdm(timesteps, desc="4DNeX sampling", disable=not progress)):
        if should_cancel is not None and should_cancel():
            raise SamplingCancelled(f"Sampling cancelled at step {index + 1} of {len(timesteps)}.")
        latents = scheduler.step(velocity(latents, t).float(), t, latents, return_dict=False)[0]
        if not torch.isfinite(latents).all():  # one sync per step, against a 14B forward
            raise NonFiniteLatentError(
                f"The latent became NaN or infinite at step {index + 1} of {len(timesteps)}, from {source}. "
                "Nothing was decoded or written.")
        if on_step is not None:
            on_step(index, len(timesteps), latents)
    return latents


def _check_inputs_finite(**tensors: torch.Tensor | None) -> None:
    """Raise :class:`NonFiniteLatentError` naming the first input of the loop that holds NaN or inf."""
    sources = {"condition": "the VAE encoding of the image (the VAE's weights or precision)",
               "prompt_embeds": "the text encoder (its weights or precision)",
               "negative_prompt_embeds": "the text encoder (its weights or precision)",
               "image_embeds": "the CLIP vision encoder (its weights or precision)",
               "latents": "the starting latents given"}
    for name, tensor in tensors.items():
        if tensor is not None and not torch.isfinite(tensor).all():
            raise NonFiniteLatentError(f"The sampler's {name} hold NaN or infinite values, from {sources[name]}; "
                                       "nothing was sampled.")
