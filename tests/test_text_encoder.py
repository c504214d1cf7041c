"""UMT5 text encoder: diffusers folders and ComfyUI single files (fp16, fp8-scaled), tokenizers, errors."""

import io
import json
import shutil
from pathlib import Path

import pytest
import sentencepiece
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import UMT5EncoderModel

from fourdnex_core.encoders import encode_prompt
from fourdnex_core.writing.encoders import (
    save_clip_vision_single_file,
    save_text_encoder_single_file,
    tiny_clip_vision_config,
    tiny_text_encoder_config,
)
from fourdnex_core.loading.fp8 import FP8Linear, dequantize_fp8, quantize_fp8
from fourdnex_core.loading.safetensors_io import SafetensorsHeader, TensorEntry, component_metadata
from fourdnex_core.loading.text_encoder_loader import (
    load_text_encoder,
    text_encoder_config_from_header,
    umt5_xxl_config,
)
from fourdnex_core.loading.tokenizer import (
    build_tiny_tokenizer,
    load_tokenizer,
    tiny_corpus,
    tokenizer_from_spiece_bytes,
)

PROMPTS = ["the camera moves slowly over the scene POINTMAP_STYLE.", "a"]


def _embed(model, tokenizer) -> torch.Tensor:
    return encode_prompt(model, tokenizer, PROMPTS, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def diffusers_root(tmp_path_factory) -> Path:
    """A Wan-style model root: text_encoder/ (fp16-representable random weights) and tokenizer/."""
    root = tmp_path_factory.mktemp("wan")
    tokenizer = build_tiny_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    model = UMT5EncoderModel(tiny_text_encoder_config(vocab_size=len(tokenizer)))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    model.save_pretrained(root / "text_encoder")
    return root


@pytest.fixture(scope="module")
def reference(diffusers_root):
    model, tokenizer = load_text_encoder(diffusers_root, dtype=torch.float32)
    return model, tokenizer, _embed(model, tokenizer)


def _header(shapes: dict[str, tuple[int, ...]], name: str = "umt5_xxl_fp16.safetensors") -> SafetensorsHeader:
    path = Path(name)
    entries = {key: TensorEntry(key, torch.float16, shape, path, 0, 0) for key, shape in shapes.items()}
    return SafetensorsHeader(path=path, entries=entries)


def _comfy_file(model: UMT5EncoderModel, path: Path, **extra: torch.Tensor) -> Path:
    """A file like ComfyUI's: transformers names, shared.weight only, no fourdnex metadata."""
    tensors = {k: v.half() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file({**tensors, **extra}, str(path))
    return path


def test_root_and_component_folder_load_the_same_model(diffusers_root, reference):
    model, tokenizer, expected = reference
    assert isinstance(model, UMT5EncoderModel) and not model.training
    assert model.encoder.embed_tokens.weight is model.shared.weight
    component, _ = load_text_encoder(diffusers_root / "text_encoder", dtype=torch.float32)
    torch.testing.assert_close(_embed(component, tokenizer), expected, rtol=0, atol=0)


def test_fp16_single_file_round_trip_matches_diffusers_folder(diffusers_root, reference, tmp_path):
    model, tokenizer, expected = reference
    path = save_text_encoder_single_file(model, diffusers_root / "tokenizer", tmp_path / "te.safetensors",
                                         torch.float16)
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
        assert handle.get_tensor("shared.weight").dtype == torch.float16
        spiece = handle.get_tensor("spiece_model")
        assert json.loads(handle.metadata()["fourdnex_config"])["component"] == "text_encoder"
    assert "encoder.embed_tokens.weight" not in keys
    assert spiece.dtype == torch.uint8
    assert spiece.numpy().tobytes() == (diffusers_root / "tokenizer" / "spiece.model").read_bytes()

    loaded, loaded_tokenizer = load_text_encoder(path, dtype=torch.float32)
    assert loaded.encoder.embed_tokens.weight is loaded.shared.weight
    torch.testing.assert_close(_embed(loaded, loaded_tokenizer), expected, rtol=0, atol=0)


def test_fp16_loads_agree_and_keep_wo_in_fp32(diffusers_root, reference, tmp_path):
    model, tokenizer, _ = reference
    path = save_text_encoder_single_file(model, tokenizer, tmp_path / "te.safetensors", torch.float16)
    from_file, _ = load_text_encoder(path, dtype="fp16")
    from_folder, _ = load_text_encoder(diffusers_root, dtype="fp16")
    for loaded in (from_file, from_folder):
        assert loaded.shared.weight.dtype == torch.float16
        assert loaded.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    torch.testing.assert_close(_embed(from_file, tokenizer), _embed(from_folder, tokenizer), rtol=0, atol=0)


def test_embedded_spiece_model_is_the_tokenizer(diffusers_root, reference, tmp_path):
    model, tokenizer, _ = reference
    path = save_text_encoder_single_file(model, tokenizer, tmp_path / "te.safetensors", torch.float16)
    other = build_tiny_tokenizer(tmp_path / "other", vocab_size=300, seed=7)
    _, loaded_tokenizer = load_text_encoder(path, tokenizer_path=tmp_path / "other", dtype=torch.float32)
    assert len(loaded_tokenizer) == len(tokenizer) != len(other)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(diffusers_root / "tokenizer" / "spiece.model"))
    for prompt in PROMPTS + ["Ｆｕｌｌ  width\ttext, ﬁ and 日本"]:
        assert loaded_tokenizer(prompt).input_ids == processor.encode(prompt) + [1]


def test_file_without_tokenizer_uses_tokenizer_path(diffusers_root, reference, tmp_path):
    model, tokenizer, expected = reference
    config = {"fourdnex_config": json.dumps({"component": "text_encoder", "config": model.config.to_diff_dict()})}
    path = tmp_path / "bare.safetensors"
    save_file({k: v for k, v in model.state_dict().items() if k != "shared.weight"}, str(path), metadata=config)
    with pytest.raises(ValueError, match="no 'spiece_model' tensor.*tokenizer_path="):
        load_text_encoder(path, dtype=torch.float32)
    loaded, loaded_tokenizer = load_text_encoder(path, tokenizer_path=diffusers_root / "tokenizer", dtype=torch.float32)
    torch.testing.assert_close(_embed(loaded, loaded_tokenizer), expected, rtol=0, atol=0)


def test_fp8_scaled_round_trip(reference, tmp_path):
    model, tokenizer, _ = reference
    path = save_text_encoder_single_file(model, tokenizer, tmp_path / "fp8.safetensors", torch.float16,
                                         fp8_scaled=True)
    q_name = "encoder.block.0.layer.0.SelfAttention.q"
    with safe_open(str(path), "pt") as handle:
        assert "scaled_fp8" in handle.keys()
        assert handle.get_tensor(f"{q_name}.weight").dtype == torch.float8_e4m3fn
        assert handle.get_tensor(f"{q_name}.scale_weight").dtype == torch.float32
        assert handle.get_tensor("shared.weight").dtype == torch.float16

    loaded, loaded_tokenizer = load_text_encoder(path, dtype=torch.float32)
    attention = loaded.encoder.block[0].layer[0].SelfAttention
    assert isinstance(attention.q, FP8Linear) and attention.q.weight.dtype == torch.float8_e4m3fn
    wo = loaded.encoder.block[0].layer[1].DenseReluDense.wo
    assert type(wo) is torch.nn.Linear and wo.weight.dtype == torch.float32

    # Reference: the same model with every Linear weight replaced by its fp8 round trip.
    expected_model = UMT5EncoderModel(model.config).eval()
    state = model.state_dict()
    with torch.no_grad():
        for name, module in expected_model.named_modules():
            if isinstance(module, torch.nn.Linear):
                state[f"{name}.weight"] = dequantize_fp8(*quantize_fp8(state[f"{name}.weight"]), torch.float32)
    expected_model.load_state_dict(state)
    torch.testing.assert_close(_embed(loaded, loaded_tokenizer), _embed(expected_model, tokenizer),
                               rtol=1e-5, atol=1e-5)


def test_fp8_scaled_file_with_scale_input_tensors(reference, tmp_path):
    """ComfyUI's fp8-scaled files may carry ``<module>.scale_input`` (for fp8 matmuls): ignored."""
    model, tokenizer, _ = reference
    path = save_text_encoder_single_file(model, tokenizer, tmp_path / "fp8.safetensors", torch.float16,
                                         fp8_scaled=True)
    with safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    plain, _ = load_text_encoder(path, dtype=torch.float32)
    tensors["encoder.block.0.layer.0.SelfAttention.q.scale_input"] = torch.tensor(1.0)
    save_file(tensors, str(path), metadata=metadata)
    with_inputs, _ = load_text_encoder(path, dtype=torch.float32)
    torch.testing.assert_close(_embed(with_inputs, tokenizer), _embed(plain, tokenizer), rtol=0, atol=0)


def test_fp8_scaled_bf16_close_to_full_precision(reference, tmp_path):
    model, tokenizer, expected = reference
    path = save_text_encoder_single_file(model, tokenizer, tmp_path / "fp8.safetensors", torch.bfloat16,
                                         fp8_scaled=True)
    loaded, _ = load_text_encoder(path, dtype="bf16")
    assert loaded.dtype == torch.bfloat16
    assert loaded.encoder.block[1].layer[1].DenseReluDense.wo.weight.dtype == torch.bfloat16
    embeds = _embed(loaded, tokenizer)
    assert torch.isfinite(embeds).all()
    cosine = torch.nn.functional.cosine_similarity(embeds[expected != 0].reshape(-1, 32),
                                                   expected[expected != 0].reshape(-1, 32), dim=-1)
    assert cosine.min() > 0.95


def test_umt5_xxl_recognised_from_header_shapes():
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in UMT5EncoderModel(umt5_xxl_config()).state_dict().items()}
    del shapes["encoder.embed_tokens.weight"]
    config = text_encoder_config_from_header(_header({**shapes, "spiece_model": (1000,)}))
    assert (config.d_model, config.num_layers, config.vocab_size, config.num_heads) == (4096, 24, 256384, 64)
    assert config.feed_forward_proj == "gated-gelu"


def test_t5_that_is_not_umt5_xxl_is_refused(reference, tmp_path):
    model, _, _ = reference
    path = _comfy_file(model, tmp_path / "t5_small.safetensors")
    with pytest.raises(ValueError, match="not UMT5-XXL"):
        load_text_encoder(path, dtype=torch.float32)


def test_unknown_layout_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"token_embedding.weight": torch.zeros(4, 2), "blocks.0.attn.q.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ValueError, match="unknown text-encoder layout.*umt5_xxl_fp16"):
        load_text_encoder(path, dtype=torch.float32)


def test_clip_file_is_refused_by_component(tmp_path):
    from transformers import CLIPVisionModel

    path = save_clip_vision_single_file(CLIPVisionModel(tiny_clip_vision_config()), tmp_path / "clip.safetensors")
    with pytest.raises(ValueError, match="holds a 'clip_vision', not a text encoder"):
        load_text_encoder(path, dtype=torch.float32)


def test_incomplete_file_is_refused(reference, tmp_path):
    model, tokenizer, _ = reference
    state = {k: v for k, v in model.state_dict().items() if ".block.1." not in k and "embed_tokens" not in k}
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path), metadata=component_metadata("text_encoder", model.config.to_diff_dict()))
    with pytest.raises(ValueError, match="missing tensors"):
        load_text_encoder(path, tokenizer_path=tmp_path, dtype=torch.float32)


def test_bad_arguments_and_folders(diffusers_root, tmp_path):
    with pytest.raises(ValueError, match="unsupported precision 'int8'.*bf16"):
        load_text_encoder(diffusers_root, dtype="int8")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_encoder(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="neither a diffusers model folder.*umt5_xxl_fp16"):
        load_text_encoder(tmp_path)
    wrong = tmp_path / "wrong" / "text_encoder"
    wrong.mkdir(parents=True)
    (wrong / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    save_file({"x": torch.zeros(1)}, str(wrong / "model.safetensors"))
    with pytest.raises(ValueError, match="not the UMT5 text encoder"):
        load_text_encoder(wrong.parent)
    lonely = tmp_path / "lonely" / "text_encoder"
    shutil.copytree(diffusers_root / "text_encoder", lonely)
    with pytest.raises(FileNotFoundError, match="no tokenizer folder.*tokenizer_path="):
        load_text_encoder(lonely, dtype=torch.float32)
    model, _ = load_text_encoder(lonely, tokenizer_path=diffusers_root / "tokenizer", dtype=torch.float32)
    assert isinstance(model, UMT5EncoderModel)


def test_comfyui_models_folder_prefers_fp16_file(reference, tmp_path):
    model, tokenizer, expected = reference
    folder = tmp_path / "ComfyUI" / "models" / "text_encoders"
    save_text_encoder_single_file(model, tokenizer, folder / "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                                  torch.float16, fp8_scaled=True)
    save_text_encoder_single_file(model, tokenizer, folder / "umt5_xxl_fp16.safetensors", torch.float16)
    loaded, loaded_tokenizer = load_text_encoder(tmp_path / "ComfyUI", dtype=torch.float32)
    assert not any(isinstance(module, FP8Linear) for module in loaded.modules())
    torch.testing.assert_close(_embed(loaded, loaded_tokenizer), expected, rtol=0, atol=0)


def test_tokenizer_sources(diffusers_root, tmp_path):
    folder = diffusers_root / "tokenizer"
    spiece = (folder / "spiece.model").read_bytes()
    only_spiece = tmp_path / "only_spiece"
    only_spiece.mkdir()
    (only_spiece / "spiece.model").write_bytes(spiece)
    prompt = PROMPTS[0]
    expected = load_tokenizer(folder)(prompt).input_ids
    assert load_tokenizer(only_spiece)(prompt).input_ids == expected
    assert tokenizer_from_spiece_bytes(spiece)(prompt).input_ids == expected
    with pytest.raises(FileNotFoundError, match="expected tokenizer.json or spiece.model"):
        load_tokenizer(tmp_path / "nothing")
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        tokenizer_from_spiece_bytes(b"not a model")
    with pytest.raises(ValueError, match="outside 64..1024"):
        build_tiny_tokenizer(tmp_path / "huge", vocab_size=5000)
    with pytest.raises(FileNotFoundError, match="spiece.model file or a tokenizer folder"):
        save_text_encoder_single_file(UMT5EncoderModel(tiny_text_encoder_config(8)), tmp_path / "nothing",
                                      tmp_path / "te.safetensors")


@pytest.mark.parametrize("byte_fallback", [False, True])
def test_spiece_bytes_with_other_special_ids_and_byte_fallback(byte_fallback):
    """A SentencePiece model with bos and unk at 2 and 3 (not T5's layout) converts faithfully."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus(600, 1)), model_writer=model, vocab_size=400, model_type="unigram",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=byte_fallback, minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    tokenizer = tokenizer_from_spiece_bytes(model.getvalue())
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 3)
    for prompt in ["the camera moves", "  Ｆｕｌｌ  width ﬁ\tq 日本 😀", "zzzz xq"]:
        assert tokenizer(prompt).input_ids == processor.encode(prompt) + [1]
