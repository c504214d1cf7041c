"""The tiny model set in both layouts, the pipeline end to end, and the generate/demo CLI."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from fourdnex_core.cli import main
from fourdnex_core.loading.fp8 import FP8Linear, is_fp8_dtype
from fourdnex_core.writing.single_files import save_transformer_single_file
from fourdnex_core.loading.transformer_loader import load_transformer
from fourdnex_core.model_set import ModelLocations, load_pipeline
from fourdnex_core.sampler import SamplingSettings
from fourdnex_core.scene_file import load_scene
from fourdnex_core.tiny import COMFY_FILES, make_tiny_models
from fourdnex_core.transformer import FourDNeXTransformer3DModel

EXAMPLE = Path(__file__).resolve().parents[1] / "fourdnex_core" / "assets" / "example.png"
SMALL = ["--frames", "5", "--height", "32", "--width", "48", "--steps", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("tiny"))


def test_tiny_set_uses_the_real_file_names_and_layouts(tiny):
    for relative in COMFY_FILES.values():
        assert (tiny.comfy_models / relative).is_file(), relative
    model_index = json.loads((tiny.diffusers_model / "model_index.json").read_text())
    assert model_index["_class_name"] == "WanImageToVideoPipeline"
    for folder in ("transformer", "vae", "text_encoder", "tokenizer", "image_encoder", "image_processor", "scheduler"):
        assert (tiny.diffusers_model / folder).is_dir(), folder
    assert (tiny.diffusers_model / "tokenizer" / "spiece.model").is_file()
    with safe_open(tiny.comfy_models / COMFY_FILES["transformer"], "pt") as handle:
        keys = list(handle.keys())
        assert all(key.startswith("model.diffusion_model.") for key in keys)  # original Wan names, ComfyUI prefix
        assert handle.get_tensor("model.diffusion_model.head.modulation").dtype == torch.bfloat16
    with safe_open(tiny.comfy_models / COMFY_FILES["text_encoder"], "pt") as handle:
        assert "spiece_model" in handle.keys()


def test_both_layouts_load_the_same_transformer(tiny):
    from_folder = load_transformer(tiny.diffusers_model, model_cls=FourDNeXTransformer3DModel, dtype=torch.float32)
    from_file = load_transformer(tiny.comfy_models, model_cls=FourDNeXTransformer3DModel, dtype=torch.float32)
    folder_state, file_state = from_folder.state_dict(), from_file.state_dict()
    assert folder_state.keys() == file_state.keys()
    for name, value in folder_state.items():  # the ComfyUI file is bf16: equal after the same rounding
        assert torch.equal(value.to(torch.bfloat16).float(), file_state[name]), name


def _generate(pipeline, seed=42):
    settings = SamplingSettings(num_inference_steps=2, seed=seed)
    image = torch.rand(1, 40, 60, 3, generator=torch.Generator().manual_seed(0))
    return pipeline(image, "a ball", num_frames=5, height=32, width=48, settings=settings,
                    progress=False)


def test_pipeline_is_seeded_and_the_lora_changes_the_output(tiny):
    with_lora = load_pipeline(ModelLocations(root=tiny.comfy_models, lora=tiny.comfy_lora))
    first, second = _generate(with_lora), _generate(with_lora)
    assert torch.equal(first.latent, second.latent)
    assert first.rgb.shape == (5, 32, 48, 3) and first.xyz.shape == (5, 32, 48, 3)
    assert 0 <= first.rgb.min() and first.rgb.max() <= 1 and -1 <= first.xyz.min() and first.xyz.max() <= 1
    assert first.prompt == "a ball POINTMAP_STYLE."

    base = load_pipeline(ModelLocations(root=tiny.comfy_models))
    assert not torch.allclose(_generate(base).latent, first.latent, atol=1e-3)
    released_layout = load_pipeline(ModelLocations(root=tiny.comfy_models, lora=tiny.diffusers_lora))
    torch.testing.assert_close(_generate(released_layout).latent, first.latent, atol=1e-4, rtol=1e-4)


def test_generate_cli_writes_videos_scene_and_settings(tiny, tmp_path):
    out = tmp_path / "run"
    code = main(["generate", str(EXAMPLE), "--out", str(out), "--models", str(tiny.diffusers_model),
                 "--lora", str(tiny.diffusers_lora), "--prompt", "a ball", *SMALL, "--seed", "7"])
    assert code == 0
    for name in ("rgb.mp4", "xyz.mp4", "scene.npz", "run.json"):
        assert (out / name).stat().st_size > 0, name
    scene = load_scene(out / "scene.npz")
    assert scene.rgb.shape == (5, 32, 48, 3) and scene.rgb.dtype == np.uint8
    assert scene.xyz.dtype == np.float32 and np.abs(scene.xyz).max() <= 1.0
    settings = json.loads((out / "run.json").read_text())
    assert settings["seed"] == 7 and settings["prompt_used"] == "a ball POINTMAP_STYLE."
    assert settings["versions"]["diffusers"] and settings["precision_used"] == "float32"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--frames", "6"], "num_frames must be 4k+1"),
        (["--width", "50"], "width must be a positive multiple of 16"),
    ],
)
def test_generate_cli_reports_impossible_sizes(tiny, tmp_path, capsys, extra, message):
    code = main(["generate", str(EXAMPLE), "--out", str(tmp_path), "--models", str(tiny.comfy_models), *SMALL, *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_generate_cli_reports_missing_and_unreadable_inputs(tiny, tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope.png"), "--out", str(tmp_path), "--models",
                 str(tiny.comfy_models), *SMALL]) == 2
    assert "No image at" in capsys.readouterr().err
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"not an image")
    assert main(["generate", str(garbage), "--out", str(tmp_path), "--models", str(tiny.comfy_models), *SMALL]) == 2
    assert "Cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty_models"
    (empty / "diffusion_models").mkdir(parents=True)
    (empty / "vae").mkdir()
    assert main(["generate", str(EXAMPLE), "--out", str(tmp_path), "--models", str(empty), *SMALL]) == 2
    assert "wan2.1_i2v_480p_14B_bf16.safetensors" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter
def test_module_entry_point_lists_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "fourdnex_core", "--help"], capture_output=True, text=True,
                            check=True)
    for command in ("generate", "make-tiny", "demo", "postopt", "export", "render", "convert-lora"):
        assert command in result.stdout


def test_fp8_transformer_takes_the_lora_unfused(tiny, tmp_path):
    bf16 = load_transformer(tiny.comfy_models, model_cls=FourDNeXTransformer3DModel, dtype=torch.float32)
    fp8_file = save_transformer_single_file(bf16, tmp_path / "wan2.1_i2v_480p_14B_fp8_scaled.safetensors",
                                            fp8="scaled")
    base = load_pipeline(ModelLocations(root=tiny.comfy_models, transformer=fp8_file))
    with_lora = load_pipeline(ModelLocations(root=tiny.comfy_models, transformer=fp8_file, lora=tiny.comfy_lora))
    fp8_layers = [m for m in with_lora.transformer.modules() if isinstance(m, FP8Linear)]
    assert fp8_layers and all(is_fp8_dtype(m.weight.dtype) for m in fp8_layers)  # weights stay fp8
    assert any(m._forward_hooks for m in fp8_layers)  # the LoRA is attached, not fused
    assert not torch.allclose(_generate(base).latent, _generate(with_lora).latent, atol=1e-3)


def test_generate_cli_reports_corrupt_lora_and_embeddings_files(tiny, tmp_path, capsys):
    def run_with(*lora_args):
        return main(["generate", str(EXAMPLE), "--out", str(tmp_path / "out"), "--models", str(tiny.comfy_models),
                     *lora_args, *SMALL])

    good = tiny.comfy_lora.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    for path in (truncated, garbage):
        assert run_with("--lora", str(path)) == 2
        assert f"{path} is not a valid safetensors file" in capsys.readouterr().err
    embeddings = tiny.diffusers_lora / "learnable_domain_embeddings.pt"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(embeddings.read_bytes()[:100])
    assert run_with("--lora", str(tiny.diffusers_lora), "--domain-embeddings", str(cut)) == 2
    assert f"{cut} is not a readable torch file" in capsys.readouterr().err


def test_generate_cli_names_the_flag_for_ambiguous_weight_files(tiny, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(tiny.comfy_models, models)
    known = models / "diffusion_models" / "wan2.1_i2v_480p_14B_bf16.safetensors"
    shutil.copy(known, models / "diffusion_models" / "my_wan_a.safetensors")
    known.rename(models / "diffusion_models" / "my_wan_b.safetensors")
    assert main(["generate", str(EXAMPLE), "--out", str(tmp_path / "out"), "--models", str(models), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "Several transformer candidates" in err and "--transformer PATH" in err
