"""Prompt and image conditioning: 512-token zero-padded UMT5 states, the suffix, CLIP penultimate states."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionModel, UMT5EncoderModel

from fourdnex_core.encoders import (
    TEXT_LENGTH,
    clean_prompt,
    encode_image,
    encode_prompt,
    with_pointmap_style,
)
from fourdnex_core.loading.clip_vision_loader import clip_image_processor
from fourdnex_core.writing.encoders import tiny_clip_vision_config, tiny_text_encoder_config
from fourdnex_core.loading.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def text_parts(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    model = UMT5EncoderModel(tiny_text_encoder_config(vocab_size=len(tokenizer))).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def image_parts():
    torch.manual_seed(0)
    model = CLIPVisionModel(tiny_clip_vision_config()).eval()
    return model, clip_image_processor(224)


def test_suffix_appended_once_and_optional():
    assert with_pointmap_style("a dog runs") == "a dog runs POINTMAP_STYLE."
    assert with_pointmap_style("a dog runs POINTMAP_STYLE.") == "a dog runs POINTMAP_STYLE."
    assert with_pointmap_style(with_pointmap_style("x")) == "x POINTMAP_STYLE."
    assert with_pointmap_style("a dog runs", enabled=False) == "a dog runs"


def test_clean_prompt_matches_wan():
    assert clean_prompt("  a &amp;amp; b\n\t c  ") == "a & b c"


def test_prompt_embeddings_are_512_tokens_with_zero_padding(text_parts):
    model, tokenizer = text_parts
    prompts = ["the camera moves slowly", "a scene POINTMAP_STYLE. with more words in it than the first"]
    embeds = encode_prompt(model, tokenizer, prompts, device="cpu", dtype=torch.float32)
    assert embeds.shape == (2, TEXT_LENGTH, 32)
    lengths = [len(tokenizer(p).input_ids) for p in prompts]  # tokens + eos
    for row, length in zip(embeds, lengths):
        assert row[:length].abs().sum(dim=-1).gt(0).all()
        assert torch.equal(row[length:], torch.zeros_like(row[length:]))
    # Each prompt's embedding is what the encoder gives it alone, trimmed to its length.
    ids = torch.tensor([tokenizer(prompts[0]).input_ids])
    alone = model(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(embeds[0, : lengths[0]], alone, rtol=1e-5, atol=1e-5)


def test_prompt_truncation_still_returns_512(text_parts):
    model, tokenizer = text_parts
    embeds = encode_prompt(model, tokenizer, ["the " * 300], max_sequence_length=16, device="cpu",
                           dtype=torch.bfloat16)
    assert embeds.shape == (1, TEXT_LENGTH, 32) and embeds.dtype == torch.bfloat16
    assert embeds[0, :16].abs().sum(dim=-1).gt(0).all()
    assert not embeds[0, 16:].any()


def test_prompt_errors(text_parts):
    model, tokenizer = text_parts
    with pytest.raises(TypeError, match="list of strings"):
        encode_prompt(model, tokenizer, "a bare string", device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="at most 512"):
        encode_prompt(model, tokenizer, ["x"], max_sequence_length=600, device="cpu", dtype=torch.float32)
    small = UMT5EncoderModel(tiny_text_encoder_config(vocab_size=8)).eval()
    with pytest.raises(ValueError, match="tokenizer that belongs"):
        encode_prompt(small, tokenizer, ["the camera moves"], device="cpu", dtype=torch.float32)


def test_image_embeddings_are_penultimate_hidden_states(image_parts):
    model, processor = image_parts
    eight_bit = torch.randint(0, 256, (2, 96, 160, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    embeds = encode_image(model, processor, eight_bit.float() / 255, device="cpu", dtype=torch.float32)
    assert embeds.shape == (2, 257, 24)
    pixels = processor(images=list(eight_bit.numpy()), return_tensors="pt").pixel_values
    outputs = model(pixel_values=pixels, output_hidden_states=True)
    torch.testing.assert_close(embeds, outputs.hidden_states[-2])
    assert not torch.allclose(embeds, outputs.hidden_states[-1])


def test_image_tensor_and_pil_inputs_agree(image_parts):
    model, processor = image_parts
    pixels = np.random.default_rng(2).integers(0, 256, size=(120, 90, 3), dtype=np.uint8)
    from_pil = encode_image(model, processor, Image.fromarray(pixels), device="cpu", dtype=torch.float32)
    as_tensor = torch.from_numpy(pixels).float()[None] / 255
    from_tensor = encode_image(model, processor, as_tensor, device="cpu", dtype=torch.float32)
    torch.testing.assert_close(from_pil, from_tensor, rtol=1e-4, atol=1e-4)


def test_image_errors(image_parts):
    model, processor = image_parts
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        encode_image(model, processor, torch.rand(1, 3, 32, 32), device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="divide 8-bit images by 255"):
        encode_image(model, processor, torch.full((1, 32, 32, 3), 200.0), device="cpu", dtype=torch.float32)
    with pytest.raises(TypeError, match="PIL image"):
        encode_image(model, processor, ["not an image"], device="cpu", dtype=torch.float32)


def test_image_tensors_reach_the_processor_as_8_bit_pictures():
    """As a PIL image would: with float pixels, transformers' torchvision backend resizes without clamping."""
    from fourdnex_core.encoders import _processor_inputs

    images = torch.zeros(2, 5, 7, 3)
    images[:, :, 3:] = 1.0
    images[1, 0, 0] = torch.tensor([0.3, 0.5, 0.999])
    frames = _processor_inputs(images)
    assert len(frames) == 2 and all(frame.dtype == np.uint8 and frame.shape == (5, 7, 3) for frame in frames)
    np.testing.assert_array_equal(np.stack(frames), (images * 255).round().numpy().astype(np.uint8))
