"""The 4D viewer's camera keyframes in the real ComfyUI frontend, end to end (issue 15).

Two steps, each with the Python that has what it needs:

1. ``browse`` (the harness's tools venv: selenium + headless Chromium, a running ComfyUI with the pack)::

       /tmp/comfy-harness/venv-tools/bin/python scripts/check_viewer_keyframes.py browse \\
           http://127.0.0.1:8188 workflows/7_novel_view_vace.json OUT_DIR --harness-tools /work/shared/tools/comfyui-harness

   loads the workflow in the frontend (connecting the Preview's camera_path to the render and the
   render's frames to a PreviewImage where the workflow does not) and queues it, so the in-node viewer
   shows the points; drags
   the viewer to orbit and clicks "add view", twice at two poses; sets Render Novel View's trajectory
   to viewer-path; saves the workflow (the frontend's graph serialisation) and loads it again on a
   freshly loaded page; checks that the keyframes are still there (widget value and the viewer's
   "2 views"); queues it and downloads the rendered frames the workflow previews (the render's
   ``frames`` into a PreviewImage). Writes OUT_DIR/saved_workflow.json, keyframes.json, frame_*.png,
   screenshots and browse.json.

2. ``compare`` (the pack's venv)::

       .venv/bin/python scripts/check_viewer_keyframes.py compare OUT_DIR --input-dir COMFYUI/input --output-dir COMFYUI/output

   renders the same scene offline along the stored keyframes with the pack's own nodes (same settings
   as the workflow's) and checks the frames the server rendered are those (within 8-bit rounding): the
   first frame is the first keyframe's view, the last the second's. Prints and writes compare.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

RENDER = "FourDNeXRenderNovelView"
PREVIEW = "FourDNeXPointCloudPreview"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _http_json(url: str, data=None):
    request = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


class Frontend:
    """The real frontend in headless Chromium (the harness's Browser), driven as a person would."""

    def __init__(self, server: str, tools: Path):
        sys.path.insert(0, str(tools))
        from run_workflow import Browser  # the harness's own Chromium set-up

        self.server = server
        self.browser = Browser(server)
        self.driver = self.browser.d
        self.driver.set_window_size(1600, 1000)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def load(self, workflow: dict) -> None:
        self.driver.execute_async_script(
            "const [wf, done] = [arguments[0], arguments[arguments.length - 1]];"
            "window.app.loadGraphData(JSON.parse(wf), true, true, null, {showMissingNodesDialog: false, "
            "showMissingModelsDialog: false}).then(() => done(true), (e) => done(String(e)));", json.dumps(workflow))
        time.sleep(1.0)

    def node_id(self, node_type: str) -> int:
        return self.js("return (window.app.graph.nodes ?? window.app.graph._nodes).find((n) => n.type === arguments[0])"
                       ".id;", node_type)

    def queue_and_wait(self, timeout: float = 1500) -> dict:
        """Queue through the frontend (its own graph serialisation) and wait for the history entry."""
        before = set(_http_json(f"{self.server}/history?max_items=200") or {})
        self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "window.app.queuePrompt(0, 1).then(() => done(true), (e) => done(String(e)));")
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = _http_json(f"{self.server}/history?max_items=200") or {}
            new = [entry for key, entry in history.items() if key not in before]
            if new and new[0].get("status", {}).get("completed") is not None:
                if new[0]["status"].get("status_str") != "success":
                    raise RuntimeError(f"the run failed: {json.dumps(new[0]['status'])[:2000]}")
                return new[0]
            time.sleep(1.0)
        raise TimeoutError("the queued workflow did not finish")

    def show_node(self, node_id: int) -> None:
        """Put the node in the middle of the canvas at zoom 1, so its viewer is on screen."""
        self.js("const n = window.app.graph.getNodeById(arguments[0]); const c = window.app.canvas;"
                "c.ds.scale = 1; c.ds.offset[0] = -n.pos[0] + 300; c.ds.offset[1] = -n.pos[1] + 120;"
                "c.setDirty(true, true);", node_id)
        time.sleep(1.0)

    def viewer_status(self, node_id: int) -> str:
        return self.js("return window.app.graph.getNodeById(arguments[0]).fourdnexViewer.status.textContent;", node_id)

    def wait_for_points(self, node_id: int, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.viewer_status(node_id)
            if status.endswith("points") and not status.startswith("0 "):
                return status
            time.sleep(0.5)
        raise TimeoutError(f"the viewer shows no points: {self.viewer_status(node_id)!r}")

    def element(self, node_id: int, part: str):
        return self.js(f"return window.app.graph.getNodeById(arguments[0]).fourdnexViewer.{part};", node_id)

    def drag(self, node_id: int, dx: int, dy: int) -> None:
        """Press the left button on the viewer and drag (OrbitControls: rotate)."""
        from selenium.webdriver.common.action_chains import ActionChains

        canvas = self.element(node_id, "canvas")
        chain = ActionChains(self.driver).move_to_element(canvas).click_and_hold()
        for _ in range(3):  # in steps, as a hand moves
            chain = chain.move_by_offset(dx // 3, dy // 3)
        chain.release().perform()
        time.sleep(0.5)

    def click(self, node_id: int, part: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).move_to_element(self.element(node_id, part)).click().perform()
        time.sleep(0.5)

    def widget(self, node_id: int, name: str):
        return self.js("return window.app.graph.getNodeById(arguments[0]).widgets.find((w) => w.name === arguments[1])"
                       ".value;", node_id, name)

    def set_widget(self, node_id: int, name: str, value) -> None:
        self.js("const w = window.app.graph.getNodeById(arguments[0]).widgets.find((w) => w.name === arguments[1]);"
                "w.value = arguments[2]; w.callback?.(w.value); window.app.graph.setDirtyCanvas(true, true);",
                node_id, name, value)

    def wire(self, preview: int, render: int) -> None:
        """Connect Preview's camera_path to the render's, and the render's frames to a PreviewImage, where the
        workflow does not (as a person would drag the links)."""
        self.js("const g = window.app.graph; const p = g.getNodeById(arguments[0]), r = g.getNodeById(arguments[1]);"
                "const slot = r.findInputSlot('camera_path');"
                "if (r.inputs[slot].link == null) p.connect(p.findOutputSlot('camera_path'), r, slot);"
                "const fed = (r.outputs[0].links || []).some((l) => g.getNodeById(g.links[l].target_id).type === "
                "'PreviewImage');"
                "if (!fed) { const v = LiteGraph.createNode('PreviewImage'); v.pos = [r.pos[0] + 260, r.pos[1]];"
                "g.add(v); r.connect(0, v, 0); }", preview, render)

    def camera(self, node_id: int) -> list[float]:
        return self.js("return window.app.graph.getNodeById(arguments[0]).fourdnexViewer.camera.position.toArray();",
                       node_id)

    def serialize(self) -> dict:
        return json.loads(self.js("return JSON.stringify(window.app.graph.serialize());"))

    def reload_page(self) -> None:
        self.driver.get(self.server + "/")
        deadline = time.time() + 120
        while not self.js("return !!(window.app && window.app.graph && window.app.canvas)"):
            if time.time() > deadline:
                raise TimeoutError("the frontend did not come back")
            time.sleep(0.25)
        time.sleep(0.5)


def _download_images(server: str, history: dict, node_id: int, out: Path, prefix: str) -> list[str]:
    names = []
    for index, image in enumerate(history["outputs"][str(node_id)]["images"]):
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        target = out / f"{prefix}_{index:03d}.png"
        urllib.request.urlretrieve(f"{server}/view?{query}", target)
        names.append(target.name)
    return names


def _frames_preview(workflow: dict, render_id: int) -> int:
    """The id of the PreviewImage fed by the render's frames output (slot 0)."""
    by_id = {node["id"]: node for node in workflow["nodes"]}
    for _, source, slot, target, _, _ in workflow["links"]:
        if source == render_id and slot == 0 and by_id[target]["type"] == "PreviewImage":
            return target
    raise ValueError("The workflow previews no frames of Render Novel View (connect frames to a PreviewImage).")


def browse(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workflow = json.loads(Path(args.workflow).read_text(encoding="utf-8"))
    report: dict = {"workflow": str(args.workflow)}
    frontend = Frontend(args.server.rstrip("/"), Path(args.harness_tools))
    try:
        frontend.load(workflow)
        preview, render = frontend.node_id(PREVIEW), frontend.node_id(RENDER)
        frontend.wire(preview, render)
        frames_node = _frames_preview(frontend.serialize(), render)
        started = time.time()
        first = frontend.queue_and_wait()
        report["first_run_s"] = round(time.time() - started, 1)
        _download_images(frontend.server, first, frames_node, out, "orbit")
        frontend.show_node(preview)
        report["viewer_after_run"] = frontend.wait_for_points(preview)
        poses = []
        for drag in ((24, 0), (-18, 12)):  # orbit (~34 degrees right), add a view, orbit back and up, add another
            frontend.drag(preview, *drag)
            poses.append(frontend.camera(preview))
            frontend.click(preview, "addView")
        report["viewer_camera_positions"] = poses
        frontend.driver.save_screenshot(str(out / "viewer_two_views.png"))
        stored = json.loads(frontend.widget(preview, "camera_keyframes"))
        report["views_label"] = frontend.element(preview, "viewsLabel").text
        assert len(stored["keyframes"]) == 2, stored
        assert poses[0] != poses[1], "the drags did not move the viewer's camera"
        frontend.set_widget(render, "trajectory", "viewer-path")
        saved = frontend.serialize()
        (out / "saved_workflow.json").write_text(json.dumps(saved, indent=1), encoding="utf-8")
        frontend.reload_page()
        frontend.load(saved)
        preview, render = frontend.node_id(PREVIEW), frontend.node_id(RENDER)
        reloaded = json.loads(frontend.widget(preview, "camera_keyframes"))
        assert reloaded == stored, "the keyframes changed on the way through the saved workflow"
        assert frontend.widget(render, "trajectory") == "viewer-path"
        report["views_label_after_reload"] = frontend.element(preview, "viewsLabel").text
        assert report["views_label_after_reload"] == "2 views", report["views_label_after_reload"]
        (out / "keyframes.json").write_text(json.dumps(reloaded, indent=1), encoding="utf-8")
        started = time.time()
        second = frontend.queue_and_wait()
        report["second_run_s"] = round(time.time() - started, 1)
        report["frames"] = _download_images(frontend.server, second, frames_node, out, "frame")
        frontend.show_node(preview)
        frontend.wait_for_points(preview)
        frontend.driver.save_screenshot(str(out / "after_second_run.png"))
        render_widgets = next(n for n in saved["nodes"] if n["id"] == render)["widgets_values"]
        report["render_widgets"] = render_widgets
        report["keyframes"] = len(reloaded["keyframes"])
        report["browser_errors"] = frontend.browser.errors()
    finally:
        (out / "browse.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        frontend.browser.close()
    print(json.dumps(report, indent=1))
    return 0


def compare(args: argparse.Namespace) -> int:
    """Render the workflow's scene along the stored keyframes offline and compare with the server's frames."""
    import os

    import numpy as np
    from PIL import Image

    out = Path(args.out)
    browse_report = json.loads((out / "browse.json").read_text(encoding="utf-8"))
    saved = json.loads((out / "saved_workflow.json").read_text(encoding="utf-8"))
    os.environ["FOURDNEX_INPUT_DIR"] = args.input_dir
    os.environ["FOURDNEX_OUTPUT_DIR"] = args.output_dir or args.input_dir
    os.environ["FOURDNEX_TEMP_DIR"] = str(out / "temp")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import nodes

    from fourdnex_core.geometry.keyframes import parse_keyframes

    by_type = {node["type"]: node for node in saved["nodes"]}

    def run(node_type, **links):
        cls = nodes.NODE_CLASS_MAPPINGS[node_type]
        spec = cls.INPUT_TYPES()
        # widgets in the frontend's order: the required ones, then the optional ones (sockets have no value)
        names = [name for section in ("required", "optional") for name, (kind, *_) in spec.get(section, {}).items()
                 if name not in links and (isinstance(kind, list) or kind in WIDGET_TYPES)]
        widgets = dict(zip(names, by_type[node_type]["widgets_values"]))
        result = getattr(cls(), cls.FUNCTION)(**widgets, **links)
        return result["result"] if isinstance(result, dict) else result

    source = "FourDNeXSyntheticScene" if "FourDNeXSyntheticScene" in by_type else "FourDNeXLoadScene"
    (point_maps, _, _) = run(source)
    cameras, _, _, registered = run("FourDNeXPostOptimize", point_maps=point_maps)
    (clouds,) = run("FourDNeXPointClouds", point_maps=registered, cameras=cameras)
    keyframes_text = (out / "keyframes.json").read_text(encoding="utf-8")
    frames, holes, _ = run(RENDER, point_clouds=clouds, camera_path=parse_keyframes(keyframes_text))
    expected = (np.clip(frames.numpy() * 255.0, 0, 255)).astype(np.uint8)  # as ComfyUI's PreviewImage writes
    served = np.stack([np.asarray(Image.open(out / name).convert("RGB")) for name in browse_report["frames"]])
    orbit = np.asarray(Image.open(out / "orbit_000.png").convert("RGB"))
    difference = np.abs(expected.astype(int) - served.astype(int))
    report = {
        "views": int(served.shape[0]),
        "max_abs_difference_8bit": int(difference.max()),
        "pixels_differing": int((difference.max(axis=-1) > 1).sum()),
        "first_frame_differs_from_the_orbit": bool(np.abs(orbit.astype(int) - served[0].astype(int)).max() > 8),
        "hole_share_first_last": [round(float(holes[0].mean()), 3), round(float(holes[-1].mean()), 3)],
    }
    (out / "compare.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(json.dumps(report, indent=1))
    # the server's post-optimization may round differently on other threads: a few edge pixels may move
    report["share_of_pixels_differing"] = round(report["pixels_differing"] / (served.shape[0] * served.shape[1] *
                                                                              served.shape[2]), 5)
    ok = served.shape == expected.shape and report["share_of_pixels_differing"] <= 0.005 and \
        report["first_frame_differs_from_the_orbit"]
    print("the render followed the viewer's keyframes" if ok else "MISMATCH")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    b = sub.add_parser("browse", help="drive the real frontend (harness tools venv)")
    b.add_argument("server")
    b.add_argument("workflow", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("--harness-tools", default="/work/shared/tools/comfyui-harness",
                   help="folder of the harness's run_workflow.py")
    c = sub.add_parser("compare", help="offline render and comparison (the pack's venv)")
    c.add_argument("out", type=Path)
    c.add_argument("--input-dir", default="/tmp/comfy-harness/ComfyUI/input",
                   help="ComfyUI's input folder (where a Load Scene workflow's scene is)")
    c.add_argument("--output-dir", help="ComfyUI's output folder (default: the input folder)")
    args = parser.parse_args()
    return browse(args) if args.step == "browse" else compare(args)


if __name__ == "__main__":
    raise SystemExit(main())
