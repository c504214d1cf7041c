"""The example workflows (UI format, workflows/*.json) checked against the node definitions, without ComfyUI.

Our nodes' definitions come from their INPUT_TYPES (with a models folder holding the real ComfyUI
file names, as the tiny set has); ComfyUI's core nodes from tests/fixtures/comfyui_core_nodes.json,
copied from a real ComfyUI 0.3.64's /object_info.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import nodes
from fourdnex_core.tiny import COMFY_FILES

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
CORE = json.loads((Path(__file__).parent / "fixtures" / "comfyui_core_nodes.json").read_text(encoding="utf-8"))["nodes"]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROLS = {"fixed", "increment", "decrement", "randomize"}
# Widgets the ComfyUI frontend adds beyond the declared inputs (Preview3D's viewer state). LoadImage's
# upload button value follows its image input (options "image_upload").
FRONTEND_EXTRA_WIDGETS = {"Preview3D": 1}
# Nodes that live in the frontend only (no /object_info entry, never sent to the server).
FRONTEND_ONLY = {"Note", "MarkdownNote"}


@pytest.fixture(scope="module")
def definitions(tmp_path_factory):
    """{node type: {"inputs": [(name, type, options, optional)], "outputs": [types]}} for ours and the core's."""
    models = tmp_path_factory.mktemp("models")
    for relative in COMFY_FILES.values():  # the real file names, empty: only the lists matter here
        (models / relative).parent.mkdir(parents=True, exist_ok=True)
        (models / relative).touch()
    saved = os.environ.get("FOURDNEX_MODELS_DIR")
    os.environ["FOURDNEX_MODELS_DIR"] = str(models)
    try:
        ours = {name: _declared(cls.INPUT_TYPES(), list(cls.RETURN_TYPES))
                for name, cls in nodes.NODE_CLASS_MAPPINGS.items()}
    finally:
        if saved is None:
            os.environ.pop("FOURDNEX_MODELS_DIR")
        else:
            os.environ["FOURDNEX_MODELS_DIR"] = saved
    core = {name: _declared(info["input"], info["output"]) for name, info in CORE.items()}
    return {**core, **ours}


def _declared(spec: dict, outputs: list) -> dict:
    inputs = []
    for section in ("required", "optional"):
        for name, declaration in spec.get(section, {}).items():
            kind, options = declaration[0], (declaration[1] if len(declaration) > 1 else {})
            if isinstance(kind, list):
                kind, options = "COMBO", {**options, "options": kind}
            elif kind == "COMBO":
                options = {**options, "options": options["options"]}
            inputs.append((name, kind, options, section == "optional"))
    return {"inputs": inputs, "outputs": outputs}


def _load(path: Path) -> dict:
    workflow = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(workflow.get("nodes"), list) and "links" in workflow, f"{path.name} is not UI format"
    return workflow


def _server_nodes(path: Path) -> list[dict]:
    """The workflow's nodes the server runs (not the frontend-only notes)."""
    return [node for node in _load(path)["nodes"] if node["type"] not in FRONTEND_ONLY]


def test_there_are_eight_workflows():
    assert [p.name for p in WORKFLOWS] == ["1_image_to_4d.json", "2_image_to_4d_core_encoders.json",
                                           "3_from_saved_scene.json", "3b_synthetic_scene.json",
                                           "4_novel_view_orbit_video.json", "5_image_to_4d_low_vram.json",
                                           "6_image_to_4d_native_wan.json", "7_novel_view_vace.json"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_node_types_exist(path, definitions):
    for node in _load(path)["nodes"]:
        assert node["type"] in definitions or node["type"] in FRONTEND_ONLY, \
            f"{path.name}: unknown node type {node['type']}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_links_connect_compatible_types(path, definitions):
    workflow = _load(path)
    by_id = {node["id"]: node for node in workflow["nodes"]}
    for link_id, source, source_slot, target, target_slot, kind in workflow["links"]:
        source_node, target_node = by_id[source], by_id[target]
        produced = definitions[source_node["type"]]["outputs"][source_slot]
        target_input = target_node["inputs"][target_slot]
        declared = {name: kind_ for name, kind_, _, _ in definitions[target_node["type"]]["inputs"]}
        where = f"{path.name}: {target_node['type']}.{target_input['name']}"
        assert target_input["name"] in declared, f"{where} is not an input of the node"
        wanted = declared[target_input["name"]]
        assert wanted in ("*", produced), \
            f"{where}: link {link_id} carries {produced}, the input takes {wanted}"
        assert kind == produced and target_input["link"] == link_id
        assert link_id in source_node["outputs"][source_slot]["links"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_required_inputs_are_connected(path, definitions):
    for node in _server_nodes(path):
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        for name, kind, _, optional in definitions[node["type"]]["inputs"]:
            if kind not in WIDGET_TYPES and not optional:
                assert name in linked, f"{path.name}: {node['type']} #{node['id']} needs its {name} input connected"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_widget_values_fit_their_inputs(path, definitions):
    for node in _server_nodes(path):
        values = list(node.get("widgets_values") or [])
        for name, kind, options, _ in definitions[node["type"]]["inputs"]:
            if kind not in WIDGET_TYPES:
                continue
            assert values, f"{path.name}: {node['type']} #{node['id']} lacks a value for {name}"
            _check_value(f"{path.name}: {node['type']}.{name}", kind, options, values.pop(0))
            if options.get("control_after_generate"):
                assert values.pop(0) in SEED_CONTROLS
            if options.get("image_upload"):
                values.pop(0)
        assert len(values) <= FRONTEND_EXTRA_WIDGETS.get(node["type"], 0), \
            f"{path.name}: {node['type']} #{node['id']} has extra widget values {values}"


def _check_value(where: str, kind: str, options: dict, value) -> None:
    if kind == "COMBO":
        assert value in options["options"], f"{where}: {value!r} is not one of {options['options'][:8]}"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a boolean"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a string"
    else:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a number"
        if kind == "INT":
            assert float(value).is_integer(), f"{where}: {value!r} is not an integer"
        assert options.get("min", -float("inf")) <= value <= options.get("max", float("inf")), \
            f"{where}: {value!r} is outside [{options.get('min')}, {options.get('max')}]"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_generation_settings_are_valid_sizes(path):
    from fourdnex_core.representation import check_video_size

    for node in _load(path)["nodes"]:
        if node["type"] == "FourDNeXSampler":
            width, height, length = node["widgets_values"][:3]
            check_video_size(length, height, width)
            assert node["widgets_values"][8] == "fixed"  # the example reproduces: fixed seed


def test_save_prefixes_stay_in_the_output_folder(tmp_path):
    from nodes.comfy_bridge import safe_output_folder

    for path in WORKFLOWS:
        for node in _load(path)["nodes"]:
            if node["type"] in ("FourDNeXSave", "SaveAnimatedWEBP", "SaveVideo"):
                safe_output_folder(tmp_path, node["widgets_values"][0])


FRONTEND_SIZES = json.loads((Path(__file__).parent / "fixtures" / "frontend_node_sizes.json").read_text("utf-8"))
TITLE_HEIGHT = 30  # the frontend draws a node's title bar above its position


def _drawn_rect(node: dict, sizes: dict) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a node as the frontend draws it: title bar included, at the larger of
    the saved size and the frontend's own (tests/fixtures/frontend_node_sizes.json, from a harness export)."""
    width = max(node["size"][0], sizes[str(node["id"])][0])
    height = max(node["size"][1], sizes[str(node["id"])][1])
    x, y = node["pos"]
    return x, y - TITLE_HEIGHT, x + width, y + height


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_no_two_nodes_overlap_at_the_sizes_the_frontend_draws(path):
    sizes = FRONTEND_SIZES[path.name]
    nodes = _load(path)["nodes"]
    missing = {str(n["id"]) for n in nodes} - set(sizes)
    assert not missing, f"{path.name}: no frontend size for nodes {missing}; refresh (scripts/layout_workflows.py)"
    rects = {node["id"]: _drawn_rect(node, sizes) for node in nodes}
    ids = sorted(rects)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (l1, t1, r1, b1), (l2, t2, r2, b2) = rects[a], rects[b]
            assert r1 <= l2 or r2 <= l1 or b1 <= t2 or b2 <= t1, f"{path.name}: nodes #{a} and #{b} overlap"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_node_sits_in_one_stage_group_read_left_to_right(path):
    workflow = _load(path)
    groups = workflow["groups"]
    assert groups, f"{path.name} has no stage groups"
    titles = [group["title"] for group in groups]
    assert titles == [f"{i + 1} {title.split(' ', 1)[1]}" for i, title in enumerate(titles)], titles
    lefts = [group["bounding"][0] for group in groups]
    assert lefts == sorted(lefts), f"{path.name}: stage groups do not read left to right"
    sizes = FRONTEND_SIZES[path.name]
    for node in _server_nodes(path):
        left, top, right, bottom = _drawn_rect(node, sizes)
        holding = [g["title"] for g in groups
                   if g["bounding"][0] <= left and right <= g["bounding"][0] + g["bounding"][2]
                   and g["bounding"][1] <= top and bottom <= g["bounding"][1] + g["bounding"][3]]
        assert len(holding) == 1, f"{path.name}: {node['type']} #{node['id']} is inside {holding}"
