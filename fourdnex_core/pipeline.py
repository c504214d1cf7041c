"""One image in, RGB frames and XYZ point maps out: the 4DNeX generation pipeline.

Stages, each in its own module: text and image encoding (:mod:`.encoders`), the condition latent
(:mod:`.conditioning`), the denoising loop (:mod:`.sampler`) and decoding (:mod:`.decode`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from PIL import Image

from .conditioning import encode_condition
from .decode import decode_wide_latent
from .encoders import encode_image, encode_prompt, with_pointmap_style
from .image_io import RESIZE_MODES, fit_image, image_to_tensor, resize_point_map
from .lowvram import (
    BlockSwap,
    ComponentOffload,
    EmbeddingCache,
    LowVramOptions,
    PromptKey,
    sampling_transformer,
    transformer_on_device,
)
from .representation import check_video_size, xyz_init_map
from .sampler import Conditioning, SamplingSettings, StepCallback, sample

@dataclasses.dataclass
class GenerationResult:
    """rgb: [F, H, W, 3] in [0, 1]; xyz: [F, H, W, 3] scene units; latent: [1, 16, f, h, 2w].

    prompt is the text actually encoded (with the suffix); device and dtype those of the transformer.
    """

    rgb: torch.Tensor
    xyz: torch.Tensor
    latent: torch.Tensor
    prompt: str
    device: str
    dtype: str


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@dataclasses.dataclass
class FourDNeXPipeline:
    """The six components of a 4DNeX model set (see :mod:`fourdnex_core.model_set` to load them).

    Memory options (:mod:`fourdnex_core.lowvram`), all off by default:

    - ``memory``: the :class:`~fourdnex_core.lowvram.LowVramOptions` the transformer was prepared
      with (its step cache wraps the transformer for each run);
    - ``offload``: a :class:`~fourdnex_core.lowvram.ComponentOffload` holding the VAE, text encoder
      and CLIP vision (their fields are then None): each comes to ``device`` for its stage only.
      The transformer then waits in CPU memory too and is placed on ``device`` for the sampling
      only (blocks swapped per ``memory.blocks_to_swap``, "auto" counted from the VRAM free at
      that moment), so the encoders and the VAE never share the GPU with it;
    - ``block_swap``: the resident transformer's :class:`~fourdnex_core.lowvram.BlockSwap`, if any
      (without ``offload``);
    - ``embedding_cache`` with ``text_encoder_identity`` (see
      :func:`~fourdnex_core.lowvram.file_identity`): a prompt seen before is not encoded again.
    """

    transformer: torch.nn.Module
    vae: Any
    text_encoder: torch.nn.Module | None
    tokenizer: Any
    image_encoder: torch.nn.Module | None
    image_processor: Any
    memory: LowVramOptions = dataclasses.field(default_factory=LowVramOptions)
    offload: ComponentOffload | None = None
    block_swap: BlockSwap | None = None
    embedding_cache: EmbeddingCache | None = None
    text_encoder_identity: str | None = None
    device: torch.device | None = None

    @contextlib.contextmanager
    def transformer_stage(self, device: torch.device) -> Iterator[None]:
        """The transformer on ``device`` for one sampling run: placed for the run and back in CPU
        memory after when the other components are offloaded, resident otherwise (a block prefetched
        for a next step goes back, before the VAE needs the room)."""
        if self.offload is not None:
            with transformer_on_device(self.transformer, self.memory, device):
                yield
            return
        try:
            yield
        finally:
            if self.block_swap is not None:
                self.block_swap.offload_all()

    @contextlib.contextmanager
    def component(self, name: str) -> Iterator[Any]:
        """The ``vae``, ``text_encoder`` or ``image_encoder`` for one stage: on the compute device
        (loaded first when offloaded with policy "free") and offloaded after, when ``offload`` holds it."""
        if self.offload is not None and name in self.offload:
            with self.offload.use(name) as module:
                yield module
        else:
            yield getattr(self, name)

    def encode_text(self, prompt: str, negative_prompt: str | None, *, pointmap_style: bool = True):
        """UMT5 embeddings [1, 512, text_dim] for the prompt (with the 4DNeX suffix) and the negative prompt.

        Returns ``(prompt_embeds, negative_prompt_embeds or None, the prompt as encoded)``; served
        from ``embedding_cache`` when it holds them (the text encoder is then never loaded).
        """
        if self.embedding_cache is None or self.text_encoder_identity is None:
            return self._encode_text(prompt, negative_prompt, pointmap_style)
        key = PromptKey(prompt, negative_prompt, pointmap_style, self.text_encoder_identity)
        return self.embedding_cache.get_or_encode(
            key, lambda: self._encode_text(prompt, negative_prompt, pointmap_style))

    def _encode_text(self, prompt: str, negative_prompt: str | None, pointmap_style: bool):
        texts = [with_pointmap_style(prompt, enabled=pointmap_style)]
        if negative_prompt is not None:
            texts.append(negative_prompt)
        with self.component("text_encoder") as text_encoder:
            embeds = encode_prompt(text_encoder, self.tokenizer, texts, device=_device_of(text_encoder),
                                   dtype=text_encoder.dtype)
        negative = embeds[1:2] if negative_prompt is not None else None
        return embeds[0:1], negative, texts[0]

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | torch.Tensor,
        prompt: str = "",
        *,
        negative_prompt: str | None = "",
        num_frames: int = 49,
        height: int = 480,
        width: int = 720,
        resize: str = "area",
        settings: SamplingSettings | None = None,
        pointmap_style: bool = True,
        xyz_init: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
        on_step: StepCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        progress: bool = True,
    ) -> GenerationResult:
        """Generate a 4D scene from one image. The defaults are the release's call (:mod:`.presets`).

        Args:
            image: PIL image or ComfyUI IMAGE [1, H, W, 3] in [0, 1].
            prompt: text description; " POINTMAP_STYLE." is appended when ``pointmap_style``.
            negative_prompt: CFG negative, encoded as given: "" (the release's) by default;
                :data:`~fourdnex_core.presets.WAN_NEGATIVE_PROMPT` is Wan's. None only with
                guidance <= 1 (no negative pass).
            num_frames, height, width: per modality (the fused video is 2 * width wide).
            resize: how the image meets height x width (:func:`~fourdnex_core.image_io.generation_size`):
                "area" (the release's: the image's aspect ratio at the area height * width, so the
                result can differ from height x width), "crop" or "stretch".
            xyz_init: [H, W, 3] first-frame XYZ guess, resampled to the video size; the sloped plane by default.
            dtype: transformer compute dtype (defaults to the transformer's parameter dtype).
        """
        check_video_size(num_frames, height, width)
        settings = settings or SamplingSettings()
        if resize not in RESIZE_MODES:
            raise ValueError(f"Unknown resize mode {resize!r}; choose one of {', '.join(RESIZE_MODES)}.")
        if settings.uses_cfg and negative_prompt is None:
            raise ValueError(f"Guidance {settings.guidance_scale} needs a negative prompt: pass \"\" (the release's) "
                             "or another text, or set guidance_scale to 1 to sample without it.")
        device = self.device or _device_of(self.transformer)
        dtype = dtype or self.transformer.dtype

        prompt_embeds, negative_embeds, used_prompt = self.encode_text(
            prompt, negative_prompt, pointmap_style=pointmap_style
        )
        picture = fit_image(image_to_tensor(image), height, width, resize)  # [3, h, w]
        height, width = picture.shape[-2:]
        with self.component("image_encoder") as image_encoder:
            image_embeds = encode_image(
                image_encoder, self.image_processor, picture.permute(1, 2, 0)[None],
                device=_device_of(image_encoder), dtype=image_encoder.dtype,
            )
        init = xyz_init_map(height, width) if xyz_init is None else resize_point_map(xyz_init, height, width)
        with self.component("vae") as vae:
            condition = encode_condition(vae, picture, init, num_frames, progress=progress)
        conditioning = Conditioning(
            condition=condition,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            image_embeds=image_embeds,
        )
        transformer = sampling_transformer(self.transformer, self.memory, settings.num_inference_steps)
        with self.transformer_stage(device):
            latent = sample(
                transformer, conditioning, settings, dtype=dtype, device=device,
                on_step=on_step, should_cancel=should_cancel, progress=progress,
            )
        with self.component("vae") as vae:
            decoded = decode_wide_latent(vae, latent, progress=progress)
        return GenerationResult(rgb=decoded.rgb, xyz=decoded.xyz, latent=latent, prompt=used_prompt,
                                device=str(device), dtype=str(dtype).removeprefix("torch."))
