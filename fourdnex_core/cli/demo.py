"""``fourdnex demo --out DIR``: every stage a user has, with nothing to download, in about a minute.

Two parts, each in its own folder of ``DIR``:

* ``random_weights/``: the tiny random-weight model set (written to ``DIR/models``) generates from
  the shipped example image, then post-optimization, point clouds and every export, and a
  novel-view render. Every stage runs its real code, but the pictures are noise: the weights are
  random.
* ``synthetic_scene/``: a ray-cast scene with known geometry (a moving camera, moving objects,
  1 % depth noise and 5 % outliers; :mod:`fourdnex_core.geometry.synthetic`) goes through the same
  geometry stages, so its depth video, point clouds and novel view make sense, and the recovered
  cameras are compared with the truth (``truth.npz``).

The geometry stages are the commands a user runs (``fourdnex postopt``, ``export``, ``render``),
called in this process. The demo ends with a table: each stage, its seconds, what it wrote where,
and the ComfyUI workflow that does the same.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ..atomic_write import check_output_folder
from ..geometry.accuracy import SHOWCASE_SCENE, TESTED_ACCURACY, CameraErrors, camera_errors, truth_scene
from ..geometry.export_viewer import write_viewer_points
from ..geometry.point_maps import depth_image
from ..geometry.pointcloud import ScenePointClouds
from ..geometry.synthetic import make_synthetic_scene
from ..representation import normalize_point_maps, xyz_image
from ..scene_file import load_scene, save_scene
from ..tiny import make_tiny_models
from ..video_io import write_video
from . import export, postopt, render
from .generate import add_generation_arguments, generate, model_locations, run_settings, write_outputs

EXAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "example.png"
RANDOM, SYNTHETIC = "random_weights", "synthetic_scene"
PARTS = {RANDOM: "tiny random weights: every stage runs its real code, the pictures are noise",
         SYNTHETIC: "a synthetic scene with known geometry: the pictures make sense"}
VIEWER_FILE = "viewer_points.bin"
VIEWER_MAX_POINTS = 50_000  # points per frame, the in-node viewer's default budget
WORKFLOW_GENERATE = "workflows/1_image_to_4d.json"
WORKFLOW_RENDER = "workflows/4_novel_view_orbit_video.json"
WORKFLOW_SYNTHETIC = "workflows/3b_synthetic_scene.json"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="run every stage on tiny random weights and on a synthetic scene (no downloads)",
        description="Write a tiny random-weight model set into OUT/models, generate from the example image with it "
                    "and run post-optimization, the exports and a novel-view render on the result "
                    f"(OUT/{RANDOM}: noise, the weights are random); then run the same geometry stages on a "
                    f"synthetic scene with known cameras (OUT/{SYNTHETIC}: pictures that make sense, and the "
                    "recovered cameras' error against the truth). Ends with a table of what was written where, "
                    "how long each stage took and which ComfyUI workflow does the same.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--image", type=Path, default=EXAMPLE_IMAGE, help="input image (default: the shipped example)")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace an earlier demo's {RANDOM}/ and {SYNTHETIC}/ files in --out (refused without it)")
    add_generation_arguments(parser)
    parser.set_defaults(prompt="a red ball rolling on a checkered floor", frames=9, height=64, width=96, steps=4)
    return parser


@dataclasses.dataclass
class Stage:
    """One row of the closing table."""

    part: str
    name: str
    seconds: float
    written: str
    workflow: str


class Stages:
    """Runs and times the demo's stages, printing a line as each starts, and collects the table."""

    def __init__(self) -> None:
        self.rows: list[Stage] = []

    @contextlib.contextmanager
    def run(self, part: str, name: str, written: str, workflow: str) -> Iterator[None]:
        if part in PARTS and all(row.part != part for row in self.rows):
            print(f"\n== {part}/: {PARTS[part]} ==", flush=True)
        print(f"\n[{part}] {name}", flush=True)
        start = time.perf_counter()
        yield
        self.rows.append(Stage(part, name, time.perf_counter() - start, written, workflow))

    def table(self, out: Path) -> str:
        """The closing table, a block per part."""
        lines = [f"{'stage':<16}{'seconds':>8}  {'same in ComfyUI':<40}  written (under {out}/)"]
        for part, description in (("set-up", "the tiny model set"), *PARTS.items()):
            rows = [row for row in self.rows if row.part == part]
            if rows:
                lines.append(f"{part}/: {description}" if part in PARTS else f"{part}: {description}")
                lines += [f"  {row.name:<14}{row.seconds:>8.1f}  {row.workflow:<40}  {row.written}" for row in rows]
        lines.append(f"{'total':<16}{sum(row.seconds for row in self.rows):>8.1f}")
        return "\n".join(lines)


def _command(module, *argv: str) -> None:
    """Run a ``fourdnex`` subcommand in this process, as ``fourdnex ARGV`` would."""
    parser = argparse.ArgumentParser(prog="fourdnex")
    module.add_parser(parser.add_subparsers(dest="command"))
    print(f"  $ fourdnex {' '.join(argv)}", flush=True)
    module.run(parser.parse_args(list(argv)))


def _depth_video(folder: Path, fps: float) -> None:
    """``folder/depth.mp4``: the post-optimized depth of ``folder/scene.npz``, near bright."""
    scene = load_scene(folder / "scene.npz")
    valid = torch.from_numpy(scene.valid) if scene.valid is not None else None
    depth = depth_image(torch.from_numpy(scene.depth), valid)
    write_video(folder / "depth.mp4", depth[..., None].expand(-1, -1, -1, 3).numpy(), fps)


@contextlib.contextmanager
def _warnings_noted(note: str | None) -> Iterator[None]:
    """With a ``note``: the warnings logged inside are printed after it, prefixed with it, instead of
    as they come (post-optimization of noise warns, rightly, about its nonsense cameras)."""
    if note is None:
        yield
        return
    root, records = logging.getLogger(), []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    saved, root.handlers = root.handlers, [Keep(logging.WARNING)]
    try:
        yield
    finally:
        root.handlers = saved
        for record in records:
            print(f"  {note}: {record.getMessage()}", flush=True)


def _geometry_stages(stages: Stages, part: str, folder: Path, fps: float, workflow_for: dict[str, str],
                     expected: str | None = None) -> None:
    """Post-optimization (+ depth video), point clouds and exports, and an orbit render of ``folder``;
    warnings are printed after ``expected`` (a note that they are expected) when given."""
    with stages.run(part, "post-optimize", "scene.npz (+ cameras, depth), depth.mp4", workflow_for["postopt"]):
        with _warnings_noted(expected):
            _command(postopt, "postopt", str(folder))
        _depth_video(folder, fps)
    with stages.run(part, "point clouds", f"export/: ply/, points.glb, cameras.json, transforms.json, images/, "
                    f"{VIEWER_FILE}", workflow_for["export"]):
        with _warnings_noted(expected):
            _command(export, "export", str(folder), "--fps", f"{fps:g}", "--overwrite")
        write_viewer_points(folder / "export" / VIEWER_FILE,
                            ScenePointClouds(load_scene(folder / "scene.npz"), max_points=VIEWER_MAX_POINTS), fps)
    with stages.run(part, "novel view", "render/render.mp4, render/frames/", workflow_for["render"]):
        with _warnings_noted(expected):
            # the demo refused an earlier demo's folder already, unless --overwrite
            _command(render, "render", str(folder), "--trajectory", "orbit", "--point-size", "2", "--fps",
                     f"{fps:g}", "--overwrite")


def _random_weights(stages: Stages, args: argparse.Namespace) -> None:
    """Set-up (the tiny model set), generation and the geometry stages on its result."""
    start = time.perf_counter()
    with stages.run("set-up", "tiny models", "models/ (ComfyUI and diffusers layouts)", "ComfyUI models/, 4DNeX loaders"):
        tiny = make_tiny_models(args.out / "models")
    args.models, args.lora = tiny.comfy_models, tiny.comfy_lora
    for name in ("transformer", "vae", "text_encoder", "clip_vision", "tokenizer", "domain_embeddings"):
        setattr(args, name, None)
    args.lora_strength = None  # the preset's
    folder = args.out / RANDOM
    with stages.run(RANDOM, "generate", "rgb.mp4, xyz.mp4, scene.npz, run.json", WORKFLOW_GENERATE):
        result = generate(args, model_locations(args))
        write_outputs(folder, result, run_settings(args, result, time.perf_counter() - start), args.fps)
    _geometry_stages(stages, RANDOM, folder, args.fps,
                     {"postopt": WORKFLOW_GENERATE, "export": WORKFLOW_GENERATE, "render": WORKFLOW_RENDER},
                     expected="expected on random weights (their XYZ is noise)")


def _synthetic_scene(stages: Stages, out: Path, fps: float) -> CameraErrors:
    """The synthetic scene, the geometry stages on it, and its recovered cameras against the truth."""
    folder = out / SYNTHETIC
    with stages.run(SYNTHETIC, "scene", "rgb.mp4, xyz.mp4, scene.npz, truth.npz", WORKFLOW_SYNTHETIC):
        synthetic = make_synthetic_scene(**SHOWCASE_SCENE)
        folder.mkdir(parents=True, exist_ok=True)
        write_video(folder / "rgb.mp4", synthetic.rgb.numpy(), fps)
        normalized, _ = normalize_point_maps(synthetic.xyz)  # as 4DNeX's XYZ video shows points
        write_video(folder / "xyz.mp4", xyz_image(normalized).numpy(), fps)
        save_scene(synthetic.to_scene_file(), folder / "scene.npz")
        save_scene(truth_scene(synthetic), folder / "truth.npz")
    _geometry_stages(stages, SYNTHETIC, folder, fps,
                     {"postopt": WORKFLOW_SYNTHETIC, "export": WORKFLOW_SYNTHETIC, "render": WORKFLOW_SYNTHETIC})
    return camera_errors(load_scene(folder / "truth.npz"), load_scene(folder / "scene.npz"))


@contextlib.contextmanager
def _quiet_logs(verbose: bool) -> Iterator[None]:
    """Warnings only while the demo runs (the loaders' INFO lines say nothing to a first-time user)."""
    root = logging.getLogger()
    level = root.level
    if not verbose:
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out, tuple(PARTS), overwrite=args.overwrite)  # before anything is written
    stages = Stages()
    with _quiet_logs(getattr(args, "verbose", False)):
        _random_weights(stages, args)
        errors = _synthetic_scene(stages, args.out, args.fps)
    print(f"\nrecovered cameras against the truth ({SYNTHETIC}/truth.npz): {errors.describe(TESTED_ACCURACY)}")
    if not errors.within(TESTED_ACCURACY):
        print("  outside the accuracy post-optimization is tested to reach: this is a bug, please report it")
        return 1
    print(f"\n{RANDOM}/ comes from random weights (noise); {SYNTHETIC}/ from a scene with known geometry.\n")
    print(stages.table(args.out))
    return 0
