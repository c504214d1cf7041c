"""4DNeX Synthetic Scene, and workflow 3b (it feeding the geometry nodes) run node by node without ComfyUI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from format_readers import read_glb, read_ply

import nodes
from fourdnex_core.geometry.accuracy import TESTED_ACCURACY, camera_errors
from fourdnex_core.geometry.cameras import backproject
from fourdnex_core.geometry.export_cameras import read_cameras_json
from fourdnex_core.geometry.point_maps import scene_from
from fourdnex_core.scene_file import load_scene

N = nodes.NODE_CLASS_MAPPINGS
WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "3b_synthetic_scene.json"
SMALL = dict(frames=5, width=48, height=32, camera_motion=1.0, moving_scale=1.0, zoom=1.0, noise=0.0,
             outlier_fraction=0.0, seed=3)


def make(**settings):
    node = N["FourDNeXSyntheticScene"]()
    return node.make(**{**SMALL, **settings})


def test_the_node_gives_point_maps_and_the_cameras_they_were_rendered_with():
    point_maps, true_cameras, rgb = make()
    assert point_maps.xyz.shape == (5, 32, 48, 3) and rgb.shape == (5, 32, 48, 3)
    assert float(rgb.min()) >= 0 and float(rgb.max()) <= 1 and float(rgb.std()) > 0.05  # a picture, not a flat fill
    assert true_cameras.K.shape == (3, 3) and true_cameras.depth.shape == (5, 32, 48)
    torch.testing.assert_close(true_cameras.cams2world[0], torch.eye(4))  # XYZ in the first camera's frame
    assert not torch.allclose(true_cameras.cams2world[-1], torch.eye(4), atol=0.05)  # the camera moves
    # without noise, the true depth and cameras give back exactly the point maps
    rebuilt = backproject(true_cameras.depth.double(), true_cameras.K.double(), true_cameras.cams2world.double())
    torch.testing.assert_close(rebuilt.float(), point_maps.xyz, atol=1e-3, rtol=1e-4)


def test_noise_outliers_and_a_zoom_reach_the_outputs():
    clean, _, _ = make()
    noisy, _, _ = make(noise=0.01, outlier_fraction=0.05)
    moved = (noisy.xyz - clean.xyz).norm(dim=-1) > 1e-4
    assert 0.5 < float(moved.float().mean())  # every pixel is noisy
    _, zooming, _ = make(zoom=1.3)
    assert zooming.K.shape == (5, 3, 3)
    assert float(zooming.K[-1, 0, 0] / zooming.K[0, 0, 0]) == pytest.approx(1.3, rel=1e-5)


def _widget_values(node_type: str, values: list) -> dict:
    """A node's widget values by input name, in its declared order (skipping seed controls)."""
    values, named = list(values), {}
    for section in ("required", "optional"):
        for name, declaration in N[node_type].INPUT_TYPES().get(section, {}).items():
            kind = declaration[0]
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                named[name] = values.pop(0)
                if declaration[1].get("control_after_generate"):
                    values.pop(0)
    return named


def run_workflow(path: Path) -> dict[int, tuple]:
    """Run a workflow of this pack's nodes in data-flow order, as ComfyUI would; ComfyUI's own nodes
    (previews, WebP saving) only get their inputs checked. Returns {node id: outputs}."""
    workflow = json.loads(path.read_text(encoding="utf-8"))
    pending = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    outputs: dict[int, tuple] = {}
    while pending:
        ready = [node for node in pending.values()
                 if all(links[i["link"]][1] in outputs for i in node.get("inputs", []) if i.get("link") is not None)]
        assert ready, "the workflow has a cycle"
        for node in ready:
            del pending[node["id"]]
            linked = {i["name"]: outputs[links[i["link"]][1]][links[i["link"]][2]]
                      for i in node.get("inputs", []) if i.get("link") is not None}
            if node["type"] not in N:
                assert all(value.ndim == 4 and value.shape[-1] == 3 for value in linked.values()), node["type"]
                outputs[node["id"]] = ()
                continue
            instance = N[node["type"]]()
            result = getattr(instance, N[node["type"]].FUNCTION)(
                **_widget_values(node["type"], node.get("widgets_values") or []), **linked)
            outputs[node["id"]] = result["result"] if isinstance(result, dict) else result
    return outputs


def test_workflow_3b_runs_without_a_model_and_recovers_the_true_cameras(tmp_path, monkeypatch):
    for name in ("OUTPUT", "INPUT", "TEMP"):
        monkeypatch.setenv(f"FOURDNEX_{name}_DIR", str(tmp_path / name.lower()))
    outputs = run_workflow(WORKFLOW)
    by_type = {node["type"]: node["id"] for node in json.loads(WORKFLOW.read_text())["nodes"]}
    point_maps, true_cameras, _ = outputs[by_type["FourDNeXSyntheticScene"]]
    cameras, depth_picture, _, _ = outputs[by_type["FourDNeXPostOptimize"]]
    errors = camera_errors(scene_from(point_maps, true_cameras), scene_from(point_maps, cameras))
    assert errors.within(TESTED_ACCURACY), errors
    assert float(depth_picture.std()) > 0.1  # depth that shows the scene, not one grey
    frames, holes, _ = outputs[by_type["FourDNeXRenderNovelView"]]
    coverage = (frames > 0).any(dim=-1).float().mean(dim=(1, 2))
    assert frames.shape[0] == point_maps.num_frames and float(coverage.min()) > 0.5, coverage.tolist()
    torch.testing.assert_close(1 - holes.mean(dim=(1, 2)), coverage)  # the hole MASK is the uncovered pixels
    (scene_file,) = outputs[by_type["FourDNeXSave"]]
    saved = tmp_path / "output" / scene_file
    scene = load_scene(saved)
    assert scene.K is not None and scene.rgb.shape[:3] == tuple(point_maps.xyz.shape[:3])
    stem = saved.name.removesuffix(".npz")
    assert len(read_glb(saved.with_name(stem + ".glb"))) == point_maps.num_frames
    assert len(read_ply(saved.parent / f"{stem}ply" / "frame_00000.ply")) > 1000
    assert read_cameras_json(saved.with_name(stem + "cameras.json")).num_frames == point_maps.num_frames
