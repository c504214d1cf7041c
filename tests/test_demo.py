"""``fourdnex demo``: every stage a user has, on tiny random weights and on a synthetic scene with
known geometry, each output read back with its reader; and commands that print only what a user
should read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio
import numpy as np
import pytest
import torch
from format_readers import read_glb, read_ply, read_viewer_points
from PIL import Image

from fourdnex_core.cli import main
from fourdnex_core.geometry.accuracy import TESTED_ACCURACY, camera_errors
from fourdnex_core.geometry.export_cameras import read_cameras_json, read_transforms_json
from fourdnex_core.geometry.point_maps import depth_image
from fourdnex_core.scene_file import load_scene

SMALL = ["--frames", "5", "--height", "32", "--width", "48", "--steps", "2"]


@pytest.mark.slow  # a fresh interpreter
def test_help_prints_no_library_warning():
    """transformers warns on import when torchvision is missing and the torchvision-backed CLIP
    processor is named; the project names the PIL one, so nothing but the help is printed."""
    result = subprocess.run([sys.executable, "-m", "fourdnex_core", "--help"], capture_output=True, text=True,
                            check=True)
    assert result.stderr == "" and result.stdout.startswith("usage: fourdnex")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(output folder, what the demo printed) of one demo run at a small generation size."""
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    captured = tmp_path_factory.mktemp("log") / "stdout.txt"
    saved = sys.stdout
    with open(captured, "w", encoding="utf-8") as sys.stdout:
        code = main(["demo", "--out", str(out), *SMALL])
    sys.stdout = saved
    assert code == 0
    return out, captured.read_text(encoding="utf-8")


def read_video(path: Path) -> np.ndarray:
    """The frames of an mp4 [N, H, W, 3] uint8."""
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return np.stack([frame for frame in reader])  # list(reader) would size itself from len(): inf
    finally:
        reader.close()


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def check_part(folder: Path, frames: int, height: int, width: int) -> tuple[set[Path], np.ndarray]:
    """Read every output of one part of the demo; returns the files read and the render's frames."""
    read = set()

    def video(name: str) -> np.ndarray:
        read.add(folder / name)
        pictures = read_video(folder / name)
        assert pictures.shape == (frames, height, width, 3), name
        return pictures

    for name in ("rgb.mp4", "xyz.mp4"):
        assert video(name).std() > 1.0, f"{name} is one flat colour"
    depth = video("depth.mp4")
    scene = load_scene(folder / "scene.npz")
    read.add(folder / "scene.npz")
    assert scene.rgb.shape == (frames, height, width, 3)
    assert scene.K is not None and scene.cams2world.shape == (frames, 4, 4) and scene.depth is not None
    assert depth.std() > 1.0, "the depth video is one flat grey"

    export = folder / "export"
    plies = sorted((export / "ply").glob("*.ply"))
    assert [p.name for p in plies] == [f"frame_{i:05d}.ply" for i in range(frames)]
    ply_sizes = [len(read_ply(p)) for p in plies]
    glb = read_glb(export / "points.glb")
    assert [len(cloud) for cloud in glb] == ply_sizes and min(ply_sizes) > 0
    header, viewer = read_viewer_points(export / "viewer_points.bin")
    assert len(viewer) == frames and all(len(cloud) > 0 for cloud in viewer)
    cameras = read_cameras_json(export / "cameras.json")
    np.testing.assert_allclose(cameras.cams2world, scene.cams2world, rtol=1e-5, atol=1e-5)
    nerfstudio, image_paths = read_transforms_json(export / "transforms.json")
    assert nerfstudio.num_frames == frames and len(image_paths) == frames
    for relative in image_paths:
        assert read_png(export / relative).shape == (height, width, 3)
        read.add(export / relative)
    read |= {*plies, export / "points.glb", export / "viewer_points.bin", export / "cameras.json",
             export / "transforms.json"}

    render = video("render/render.mp4")
    pngs = sorted((folder / "render" / "frames").glob("*.png"))
    assert len(pngs) == frames and all(read_png(p).shape == (height, width, 3) for p in pngs)
    read |= set(pngs)
    return read, render


def test_demo_writes_every_stage_and_each_file_reads_back(demo):
    out, printed = demo
    random_part, synthetic_part = out / "random_weights", out / "synthetic_scene"
    read, _ = check_part(random_part, 5, 32, 48)
    settings = json.loads((random_part / "run.json").read_text())
    assert settings["prompt_used"].endswith("POINTMAP_STYLE.") and settings["frames"] == 5
    read.add(random_part / "run.json")

    synthetic_read, render = check_part(synthetic_part, 25, 96, 144)
    read |= synthetic_read
    truth = load_scene(synthetic_part / "truth.npz")
    read.add(synthetic_part / "truth.npz")
    # the synthetic scene's novel view shows the scene: most pixels are hit (the background is black)
    assert float((render.max(axis=-1) > 16).mean(axis=(1, 2)).min()) > 0.5

    errors = camera_errors(truth, load_scene(synthetic_part / "scene.npz"))
    assert errors.within(TESTED_ACCURACY), errors
    assert errors.describe(TESTED_ACCURACY) in printed

    written = {p for p in out.rglob("*") if p.is_file() and "models" not in p.relative_to(out).parts}
    assert written == read, f"not read back: {sorted(map(str, written - read))}"
    assert (out / "models" / "comfyui" / "models" / "loras" / "4dnex_lora.safetensors").is_file()


def test_demo_ends_with_the_table_of_stages_times_and_workflows(demo):
    out, printed = demo
    table = printed[printed.rindex("\nstage ") + 1:]
    for line in ("random_weights/: tiny random weights", "synthetic_scene/: a synthetic scene with known geometry"):
        assert line in table
    for workflow in ("workflows/1_image_to_4d.json", "workflows/4_novel_view_orbit_video.json",
                     "workflows/3b_synthetic_scene.json"):
        assert workflow in table and (Path(__file__).resolve().parents[1] / workflow).is_file()
    rows = [line.split() for line in table.splitlines() if line.startswith("  ")]
    assert [row[0] for row in rows] == ["tiny", "generate", "post-optimize", "point", "novel",
                                        "scene", "post-optimize", "point", "novel"]
    seconds = [float(next(word for word in row if word.replace(".", "").isdigit())) for row in rows]
    total = float(table.splitlines()[-1].split()[-1])
    assert all(value >= 0 for value in seconds) and total == pytest.approx(sum(seconds), abs=0.1 * len(rows))


def test_a_second_demo_keeps_the_first_ones_files_unless_asked(demo, capsys):
    out, _ = demo
    before = (out / "random_weights" / "scene.npz").read_bytes()
    assert main(["demo", "--out", str(out), *SMALL]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "random_weights" / "scene.npz").read_bytes() == before


def test_depth_picture_is_not_blackened_by_a_few_points_next_to_the_camera():
    depth = torch.linspace(2.0, 10.0, 2 * 30 * 40).reshape(2, 30, 40)
    depth[0, 0, 0] = 0.001  # one flying pixel almost at the camera
    picture = depth_image(depth).flatten()
    rest = picture[1:]
    assert float(rest.max()) - float(rest.min()) > 0.9  # the other pixels span the grey range, near bright
    assert float(picture[0]) == 1.0 and float(rest[0]) > float(rest[-1])
