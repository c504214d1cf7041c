"""Finding each component in diffusers folders, ComfyUI models folders and plain file paths.

locate() only looks at names, so the files here are empty placeholders.
"""

import json

import pytest

from fourdnex_core.loading.locate import (
    COMFY_FILE_NAMES,
    ModelNotFoundError,
    ModelSource,
    as_source,
    diffusers_weight_files,
    file_or_file_in,
    locate,
)
from fourdnex_core.loading.tokenizer import spiece_bytes
from fourdnex_core.model_set import RELEASED_DOMAIN_EMBEDDINGS_FILE, RELEASED_LORA_FILE, resolve_lora


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture
def diffusers_model(tmp_path):
    root = tmp_path / "Wan2.1-I2V-14B-480P-Diffusers"
    _touch(root / "model_index.json")
    for sub in ("transformer", "vae", "text_encoder", "image_encoder"):
        _touch(root / sub / "config.json")
    _touch(root / "vae" / "diffusion_pytorch_model.safetensors")
    _touch(root / "text_encoder" / "model.safetensors")
    _touch(root / "image_encoder" / "model.safetensors")
    shards = [f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    for shard in shards:
        _touch(root / "transformer" / shard)
    index = {"weight_map": {"a.weight": shards[0], "b.weight": shards[1], "c.weight": shards[1]}}
    (root / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return root


@pytest.fixture
def comfy_models(tmp_path):
    models = tmp_path / "ComfyUI" / "models"
    for name in COMFY_FILE_NAMES["transformer"]:
        _touch(models / "diffusion_models" / "wan" / name)
    _touch(models / "diffusion_models" / "flux1-dev.safetensors")
    _touch(models / "vae" / "wan_2.1_vae.safetensors")
    _touch(models / "vae" / "ae.safetensors")
    _touch(models / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    _touch(models / "clip_vision" / "clip_vision_h.safetensors")
    return models


def test_diffusers_model_folder_gives_component_subfolders(diffusers_model):
    expected = {
        "transformer": "transformer",
        "vae": "vae",
        "text_encoder": "text_encoder",
        "clip_vision": "image_encoder",
    }
    for component, sub in expected.items():
        assert locate(diffusers_model, component) == ModelSource(component, "diffusers", diffusers_model / sub)


def test_component_folder_and_its_shards(diffusers_model):
    folder = diffusers_model / "transformer"
    assert locate(folder, "transformer") == ModelSource("transformer", "diffusers", folder)
    files = diffusers_weight_files(folder, "transformer")
    assert [f.name for f in files] == [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ]


def test_missing_shard_is_named(diffusers_model):
    (diffusers_model / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="missing shards.*00002-of-00002"):
        locate(diffusers_model, "transformer")


def test_diffusers_folder_without_weights_lists_expected_names(diffusers_model):
    (diffusers_model / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError) as error:
        locate(diffusers_model, "vae")
    message = str(error.value)
    assert "diffusion_pytorch_model.safetensors" in message and "wan_2.1_vae.safetensors" in message
    assert "found: config.json" in message


def test_comfy_transformer_preference_order(comfy_models):
    folder = comfy_models / "diffusion_models" / "wan"
    names = list(COMFY_FILE_NAMES["transformer"])
    for expected in names:
        assert locate(comfy_models, "transformer").path == folder / expected
        (folder / expected).unlink()
    with pytest.raises(ModelNotFoundError):
        locate(comfy_models / "..", "transformer", file_name="wan2.1_i2v_480p_14B_bf16.safetensors")


def test_comfy_root_and_other_components(comfy_models):
    root = comfy_models.parent
    assert locate(root, "vae") == ModelSource("vae", "single_file", comfy_models / "vae" / "wan_2.1_vae.safetensors")
    assert locate(root, "text_encoder").path.name == "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    _touch(comfy_models / "text_encoders" / "umt5_xxl_fp16.safetensors")
    assert locate(root, "text_encoder").path.name == "umt5_xxl_fp16.safetensors"
    assert locate(root, "clip_vision").path.name == "clip_vision_h.safetensors"


def test_explicit_file_name_by_name_or_relative_path(comfy_models):
    chosen = locate(comfy_models, "transformer", file_name="wan/wan2.1_i2v_480p_14B_fp8_scaled.safetensors")
    assert chosen.path.name == "wan2.1_i2v_480p_14B_fp8_scaled.safetensors"
    assert locate(comfy_models, "vae", file_name="ae.safetensors").path.name == "ae.safetensors"
    with pytest.raises(ModelNotFoundError, match=r"No file 'nope.safetensors'.*found: vae/ae.safetensors"):
        locate(comfy_models, "vae", file_name="nope.safetensors")


def test_several_unknown_candidates_are_ambiguous(comfy_models):
    (comfy_models / "vae" / "wan_2.1_vae.safetensors").unlink()
    _touch(comfy_models / "vae" / "sdxl_vae.safetensors")
    with pytest.raises(ValueError, match=r"(?s)ae.safetensors.*sdxl_vae.safetensors.*wan_2.1_vae.*file_name"):
        locate(comfy_models, "vae")


def test_a_single_unknown_candidate_is_used(comfy_models):
    (comfy_models / "vae" / "wan_2.1_vae.safetensors").unlink()
    assert locate(comfy_models, "vae").path.name == "ae.safetensors"


def test_missing_component_lists_expected_file_names(tmp_path):
    models = tmp_path / "models"
    (models / "diffusion_models").mkdir(parents=True)
    (models / "vae").mkdir()
    with pytest.raises(ModelNotFoundError) as error:
        locate(models, "transformer")
    message = str(error.value)
    for name in COMFY_FILE_NAMES["transformer"]:
        assert name in message
    assert "diffusion_models" in message and "no .safetensors files" in message


def test_files_unknown_folders_and_missing_paths(tmp_path):
    file = _touch(tmp_path / "anything.safetensors")
    assert locate(file, "vae") == ModelSource("vae", "single_file", file)
    with pytest.raises(ModelNotFoundError, match="does not exist.*wan_2.1_vae.safetensors"):
        locate(tmp_path / "missing", "vae")
    (tmp_path / "photos").mkdir()
    with pytest.raises(ModelNotFoundError, match="neither a diffusers model folder.*nor a model file"):
        locate(tmp_path / "photos", "transformer")
    with pytest.raises(ValueError, match="Unknown component 'unet'"):
        locate(file, "unet")


def test_as_source_checks_the_component(tmp_path):
    source = ModelSource("vae", "single_file", _touch(tmp_path / "v.safetensors"))
    assert as_source(source, "vae") is source
    with pytest.raises(ValueError, match="Expected a transformer source"):
        as_source(source, "transformer")


def test_a_file_or_the_named_file_in_a_folder(tmp_path):
    """One rule for every 'a file, or the folder that holds it' argument (LoRA, spiece.model)."""
    file = _touch(tmp_path / "released" / RELEASED_LORA_FILE)
    assert file_or_file_in(file, RELEASED_LORA_FILE, fix="x") == file
    assert file_or_file_in(file.parent, RELEASED_LORA_FILE, fix="x") == file
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist; pass it"):
        file_or_file_in(tmp_path / "nowhere", RELEASED_LORA_FILE, fix="pass it")  # neither file nor folder
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match=r"pytorch_lora_weights.safetensors does not exist; pass the LoRA"):
        resolve_lora(tmp_path / "folder", None)
    assert resolve_lora(file.parent, None) == (file, None)
    embeddings = _touch(file.parent / RELEASED_DOMAIN_EMBEDDINGS_FILE)
    assert resolve_lora(file, None) == (file, embeddings)
    (tmp_path / "folder" / "spiece.model").write_bytes(b"model bytes")
    assert spiece_bytes(tmp_path / "folder") == spiece_bytes(tmp_path / "folder" / "spiece.model") == b"model bytes"
    with pytest.raises(FileNotFoundError, match="spiece.model does not exist; pass a spiece.model file"):
        spiece_bytes(tmp_path / "released")
