"""CLIP vision encoder: diffusers folders and ComfyUI's clip_vision_h single file, processor, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPVisionModel, CLIPVisionModelWithProjection, UMT5EncoderModel

from fourdnex_core.encoders import encode_image
from fourdnex_core.loading.clip_vision_loader import (
    clip_image_processor,
    clip_vision_config_from_header,
    clip_vision_h_config,
    load_clip_vision,
)
from fourdnex_core.writing.encoders import (
    save_clip_vision_single_file,
    save_text_encoder_single_file,
    tiny_clip_vision_config,
    tiny_text_encoder_config,
)
from fourdnex_core.loading.safetensors_io import SafetensorsHeader, TensorEntry
from fourdnex_core.loading.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Two ComfyUI IMAGEs [2, H, W, 3] in [0, 1], not square, so resize and crop both act."""
    return torch.rand(2, 150, 260, 3, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def with_projection() -> CLIPVisionModelWithProjection:
    """A tiny CLIP with visual_projection (as some ComfyUI files carry), fp16-representable weights."""
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(tiny_clip_vision_config()).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    return model


@pytest.fixture(scope="module")
def diffusers_root(tmp_path_factory, with_projection) -> Path:
    """A Wan-style root: image_encoder/ (CLIPVisionModel config, ``vision_model.*`` weights) and image_processor/."""
    root = tmp_path_factory.mktemp("wan")
    with_projection.config.save_pretrained(root / "image_encoder")
    weights = {k: v.contiguous() for k, v in with_projection.state_dict().items() if k.startswith("vision_model.")}
    save_file(weights, str(root / "image_encoder" / "model.safetensors"), metadata={"format": "pt"})
    clip_image_processor(224).save_pretrained(root / "image_processor")
    return root


@pytest.fixture(scope="module")
def reference(diffusers_root, images):
    model, processor = load_clip_vision(diffusers_root, dtype=torch.float32)
    return model, processor, encode_image(model, processor, images, device="cpu", dtype=torch.float32)


def _header(shapes: dict[str, tuple[int, ...]]) -> SafetensorsHeader:
    path = Path("clip_vision_h.safetensors")
    entries = {key: TensorEntry(key, torch.float16, shape, path, 0, 0) for key, shape in shapes.items()}
    return SafetensorsHeader(path=path, entries=entries)


def test_root_and_component_folder_load(diffusers_root, reference, images):
    model, processor, expected = reference
    assert isinstance(model, CLIPVisionModel) and not model.training
    assert expected.shape == (2, 257, 24)
    component, component_processor = load_clip_vision(diffusers_root / "image_encoder", dtype="fp32")
    embeds = encode_image(component, component_processor, images, device="cpu", dtype=torch.float32)
    torch.testing.assert_close(embeds, expected, rtol=0, atol=0)


def test_single_file_round_trip_matches_diffusers_folder(with_projection, reference, images, tmp_path):
    _, _, expected = reference
    path = save_clip_vision_single_file(with_projection, tmp_path / "clip_vision_h.safetensors", torch.float16)
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
        assert handle.get_tensor("vision_model.embeddings.patch_embedding.weight").dtype == torch.float16
    assert {"visual_projection.weight", "vision_model.pre_layrnorm.weight", "vision_model.post_layernorm.bias"} <= keys

    model, processor = load_clip_vision(path, dtype=torch.float32)
    assert isinstance(model, CLIPVisionModel)
    embeds = encode_image(model, processor, images, device="cpu", dtype=torch.float32)
    torch.testing.assert_close(embeds, expected, rtol=0, atol=0)


def test_comfy_file_without_metadata_and_fp16(with_projection, reference, images, tmp_path):
    """ComfyUI's layout: no fourdnex metadata, a stale position_ids buffer; loaded in fp16."""
    state = {k: v.half() for k, v in with_projection.state_dict().items()}
    state["vision_model.embeddings.position_ids"] = torch.arange(257)[None]
    path = tmp_path / "clip.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match="not ViT-H/14"):
        load_clip_vision(path)

    metadata = {"fourdnex_config": json.dumps({"component": "clip_vision",
                                               "config": with_projection.config.to_diff_dict()})}
    save_file(state, str(path), metadata=metadata)
    model, processor = load_clip_vision(path, dtype="fp16")
    assert model.dtype == torch.float16
    embeds = encode_image(model, processor, images, device="cpu", dtype=torch.float32)
    torch.testing.assert_close(embeds, reference[2], rtol=2e-2, atol=2e-2)


def test_vit_h_recognised_from_header_shapes():
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(clip_vision_h_config())
    config = clip_vision_config_from_header(_header({k: tuple(v.shape) for k, v in model.state_dict().items()}))
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1280, 32, 16)
    assert (config.patch_size, config.image_size, config.intermediate_size) == (14, 224, 5120)


def test_processor_matches_wan_preprocessing(reference):
    _, processor, _ = reference
    shipped = clip_image_processor()
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    pixels = shipped(images=[picture], return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 224, 224)
    torch.testing.assert_close(pixels, processor(images=[picture], return_tensors="pt").pixel_values)
    # Centre crop of the bicubic-resized shortest side, then CLIP mean/std.
    resized = picture.resize((373, 224), Image.BICUBIC)
    left = (373 - 224) // 2
    crop = np.asarray(resized, dtype=np.float32)[:, left:left + 224] / 255
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
    expected = torch.from_numpy((crop - mean) / std).permute(2, 0, 1)[None]
    torch.testing.assert_close(pixels, expected, rtol=0, atol=0.05)


def test_wrong_files_are_refused(tmp_path):
    tokenizer = build_tiny_tokenizer(tmp_path / "tokenizer")
    text = save_text_encoder_single_file(UMT5EncoderModel(tiny_text_encoder_config(len(tokenizer))), tokenizer,
                                         tmp_path / "te.safetensors")
    with pytest.raises(ValueError, match="holds a 'text_encoder', not a CLIP vision encoder"):
        load_clip_vision(text)
    other = tmp_path / "open_clip.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(4, 3, 14, 14)}, str(other))
    with pytest.raises(ValueError, match="unknown CLIP vision layout.*clip_vision_h.safetensors"):
        load_clip_vision(other)


def test_fp8_clip_is_refused(with_projection, tmp_path):
    state = {k: v.half() for k, v in with_projection.state_dict().items()}
    state["vision_model.encoder.layers.0.mlp.fc1.weight"] = state["vision_model.encoder.layers.0.mlp.fc1.weight"].to(
        torch.float8_e4m3fn)
    metadata = {"fourdnex_config": json.dumps({"component": "clip_vision",
                                               "config": with_projection.config.to_diff_dict()})}
    path = tmp_path / "clip_fp8.safetensors"
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(ValueError, match="fp8 CLIP vision files are not supported.*fp16"):
        load_clip_vision(path)


def test_bad_arguments_and_folders(diffusers_root, tmp_path):
    with pytest.raises(ValueError, match="unsupported precision"):
        load_clip_vision(diffusers_root, dtype=torch.int8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clip_vision(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="neither a diffusers model folder.*clip_vision_h"):
        load_clip_vision(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "umt5"}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="not a CLIP vision encoder"):
        load_clip_vision(tmp_path)


def test_comfyui_models_folder(with_projection, reference, images, tmp_path):
    save_clip_vision_single_file(with_projection, tmp_path / "models" / "clip_vision" / "clip_vision_h.safetensors")
    model, processor = load_clip_vision(tmp_path / "models", dtype=torch.float32)
    embeds = encode_image(model, processor, images, device="cpu", dtype=torch.float32)
    torch.testing.assert_close(embeds, reference[2], rtol=0, atol=0)
