"""The tiny Wan2.1 VACE file (``make-tiny --native``) in the layout ComfyUI's own loader builds.

tests/fixtures/comfyui_vace_layout.json is what ComfyUI 0.3.64 made of this writer's file
(scripts/comfyui_vace_layout.py, run in the harness): the model class its detection picked, the config
it read from the weights, and every parameter of the network it built. Here, without ComfyUI, the
file written now must still be read the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fourdnex_core.tiny import NATIVE_VACE_CONFIG, NATIVE_VACE_FILE, write_native_vace

LAYOUT = json.loads((Path(__file__).parent / "fixtures" / "comfyui_vace_layout.json").read_text(encoding="utf-8"))
PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def vace_file(tmp_path_factory):
    path = write_native_vace(tmp_path_factory.mktemp("models"))
    with safe_open(path, "pt") as handle:
        tensors = {name: handle.get_slice(name) for name in handle.keys()}
        shapes = {name: list(tensors[name].get_shape()) for name in tensors}
        dtypes = {handle.get_slice(name).get_dtype() for name in tensors}
    return path, shapes, dtypes


def test_comfyui_took_this_writers_file_as_wan21_vace():
    assert LAYOUT["comfyui_model"] == "WAN21_Vace" and LAYOUT["network"] == "VaceWanModel"
    assert LAYOUT["loader_messages"] == []  # no missing or unexpected keys


def test_file_has_exactly_the_parameters_comfyui_builds(vace_file):
    path, shapes, dtypes = vace_file
    assert path.as_posix().endswith(NATIVE_VACE_FILE) and dtypes == {"F16"}
    assert all(name.startswith(PREFIX) for name in shapes)
    assert {name[len(PREFIX):]: shape for name, shape in shapes.items()} == LAYOUT["parameters"]


def test_the_keys_comfyuis_detection_reads(vace_file):
    """comfy/model_detection.py's Wan2.1 branch: head.modulation -> dim, patch_embedding -> in_dim,
    vace_patch_embedding -> a VACE model with vace_in_dim, counted vace_blocks -> vace_layers; no
    img_emb (VACE is text-to-video)."""
    _, shapes, _ = vace_file
    config = LAYOUT["unet_config"]
    assert shapes[PREFIX + "head.modulation"][-1] == config["dim"] == 256
    assert config["num_heads"] == config["dim"] // 128 == NATIVE_VACE_CONFIG["num_attention_heads"]
    assert shapes[PREFIX + "patch_embedding.weight"][1] == config["in_dim"] == 16
    assert shapes[PREFIX + "vace_patch_embedding.weight"][1] == config["vace_in_dim"] == 96
    assert shapes[PREFIX + "blocks.0.ffn.0.weight"][0] == config["ffn_dim"]
    vace_blocks = {int(m.group(1)) for name in shapes if (m := re.match(rf"{PREFIX}vace_blocks\.(\d+)\.", name))}
    assert len(vace_blocks) == config["vace_layers"] == len(NATIVE_VACE_CONFIG["vace_layers"])
    assert not any(name.startswith(PREFIX + "img_emb") for name in shapes)
    assert LAYOUT["vace_layers_mapping"] == {str(i): i for i in NATIVE_VACE_CONFIG["vace_layers"]}


def test_random_weights_are_finite_and_seeded(tmp_path):
    first, second = write_native_vace(tmp_path / "a", seed=3), write_native_vace(tmp_path / "b", seed=3)
    with safe_open(first, "pt") as a, safe_open(second, "pt") as b:
        for name in a.keys():
            tensor = a.get_tensor(name)
            assert torch.isfinite(tensor).all() and torch.equal(tensor, b.get_tensor(name)), name
