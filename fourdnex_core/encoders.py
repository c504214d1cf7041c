"""Text and image conditioning for the 4DNeX transformer, as Wan2.1 I2V computes it.

- Text: UMT5-XXL last hidden states of the prompt, zero past each prompt's true length, padded to
  exactly :data:`TEXT_LENGTH` (512) tokens: ``[B, 512, 4096]``. The 4DNeX release appends
  ``" POINTMAP_STYLE."`` to every prompt (:func:`with_pointmap_style`).
- Image: CLIP ViT-H/14 penultimate hidden states (``hidden_states[-2]``, before the last layer
  and before ``post_layernorm``): ``[B, 257, 1280]`` (256 patches + the class token).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import torch
from PIL import Image
from transformers import BaseImageProcessor, PreTrainedModel, PreTrainedTokenizerBase

# Wan's cross-attention expects text embeddings padded to exactly this many tokens.
TEXT_LENGTH = 512
POINTMAP_STYLE_SUFFIX = "POINTMAP_STYLE."

ImageInput = Image.Image | Sequence[Image.Image] | torch.Tensor


def with_pointmap_style(prompt: str, enabled: bool = True) -> str:
    """``prompt`` with the 4DNeX trigger suffix: ``"a cat" -> "a cat POINTMAP_STYLE."``.

    The release appends ``' POINTMAP_STYLE.'`` to every prompt in training and inference. A prompt
    that already ends with the suffix is returned unchanged; ``enabled=False`` returns ``prompt``.
    """
    if not enabled or prompt.rstrip().endswith(POINTMAP_STYLE_SUFFIX):
        return prompt
    return f"{prompt} {POINTMAP_STYLE_SUFFIX}"


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: HTML entities unescaped (twice), whitespace runs collapsed, stripped."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def _module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def encode_prompt(
    text_encoder: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_sequence_length: int = TEXT_LENGTH,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """UMT5 prompt embeddings, zero-padded to 512 tokens.

    Each prompt is cleaned, tokenized (eos appended, truncated to ``max_sequence_length``,
    right-padded) and encoded with its attention mask; positions past the prompt's true length
    (its tokens plus eos) are set to zero, as Wan trims and re-pads them.

    Args:
        text_encoder: a ``UMT5EncoderModel``; it runs on its own device.
        tokenizer: the UMT5 tokenizer (pad id 0).
        prompts: B prompts.
        max_sequence_length: tokens kept per prompt, at most 512.
        device, dtype: where and in which dtype the result is returned.

    Returns:
        ``[B, 512, d_model]`` (d_model = 4096 for UMT5-XXL).
    """
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a non-empty list of strings; wrap a single prompt as [prompt]")
    if not 1 <= max_sequence_length <= TEXT_LENGTH:
        raise ValueError(
            f"max_sequence_length={max_sequence_length} is outside 1..{TEXT_LENGTH}: Wan's attention "
            f"expects at most {TEXT_LENGTH} text tokens; pass a value in that range"
        )
    tokens = tokenizer(
        [clean_prompt(p) for p in prompts],
        padding="max_length",
        max_length=max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        padding_side="right",
        return_tensors="pt",
    )
    input_ids, mask = tokens.input_ids, tokens.attention_mask
    vocab_size = text_encoder.config.vocab_size
    if int(input_ids.max()) >= vocab_size:
        raise ValueError(
            f"the tokenizer produced token id {int(input_ids.max())} but the text encoder has only "
            f"{vocab_size} embeddings; load the tokenizer that belongs to this text encoder"
        )
    model_device = _module_device(text_encoder)
    hidden = text_encoder(
        input_ids=input_ids.to(model_device), attention_mask=mask.to(model_device)
    ).last_hidden_state
    # Right padding: the mask is 1 on each prompt's tokens, then 0 up to max_sequence_length.
    hidden = hidden * mask.to(device=model_device, dtype=hidden.dtype)[..., None]
    padded = hidden.new_zeros(hidden.shape[0], TEXT_LENGTH, hidden.shape[2])  # [B, 512, D]
    padded[:, :max_sequence_length] = hidden
    return padded.to(device=device, dtype=dtype)


def _processor_inputs(images: ImageInput) -> list:
    """Images as a list the CLIP processor takes: PIL images, or 8-bit [H, W, 3] arrays for tensors.

    A float tensor is rounded to 8 bits first, so it is resized exactly as the same picture given
    as a PIL image (the release's path) with either processor backend. Given float pixels,
    transformers' torchvision backend (the one used where torchvision is installed, as in
    ComfyUI) resizes without clamping, and bicubic overshoot at sharp edges then reaches the
    model (up to 23/255 on the example image); ComfyUI's own CLIPVisionEncode clamps and rounds
    to 8 bits as well.
    """
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[-1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"image tensor has shape {tuple(images.shape)} and dtype {images.dtype}; expected a "
                "float ComfyUI IMAGE [B, H, W, 3] in [0, 1] (drop an alpha channel first)"
            )
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise ValueError(
                f"image values span [{float(images.min()):.3g}, {float(images.max()):.3g}]; expected "
                "[0, 1] (divide 8-bit images by 255)"
            )
        frames = (images.detach().float().cpu() * 255.0).round().to(torch.uint8)  # [B, H, W, 3]
        return list(frames.numpy())
    images = list(images)
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise TypeError("images must be a PIL image, a non-empty list of PIL images, or a tensor [B, H, W, 3]")
    return images


@torch.no_grad()
def encode_image(
    image_encoder: PreTrainedModel,
    image_processor: BaseImageProcessor,
    images: ImageInput,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """CLIP penultimate hidden states of the conditioning images, as Wan I2V uses them.

    Args:
        image_encoder: a ``CLIPVisionModel`` (or ``CLIPVisionModelWithProjection``).
        image_processor: its CLIP image processor (resize shortest side, centre crop, normalize).
        images: a PIL image, a list of B PIL images, or a float tensor [B, H, W, 3] in [0, 1]
            (rounded to 8 bits, as a PIL image would be).
        device, dtype: where and in which dtype the result is returned.

    Returns:
        ``[B, 1 + (image_size / patch_size)^2, hidden_size]``: ``[B, 257, 1280]`` for ViT-H/14.
    """
    pixels = image_processor(
        images=_processor_inputs(images), input_data_format="channels_last", return_tensors="pt"
    ).pixel_values
    model_device = _module_device(image_encoder)
    pixels = pixels.to(device=model_device, dtype=image_encoder.dtype)  # [B, 3, S, S]
    outputs = image_encoder(pixel_values=pixels, output_hidden_states=True)
    return outputs.hidden_states[-2].to(device=device, dtype=dtype)
