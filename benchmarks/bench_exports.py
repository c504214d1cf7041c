"""Benchmark: exporting a 49 x 480 x 720 scene in every format, seconds and file sizes.

Builds a synthetic scene (geometry/synthetic.py: ray-cast ground, boxes and spheres, a moving
camera) with its true cameras and depth, as post-optimization leaves a scene, then

* builds the per-frame point clouds once (filters and the per-frame point budget, as the CLI
  does) and times that alone;
* writes each format alone from those clouds through ``export_scene`` (the code ``fourdnex
  export`` and the Save node run), timing it (median of ``--repeats``) and measuring what it
  wrote on disk;
* writes every format in one pass from the scene, clouds built on the way (``fourdnex export --all``).

Prints a markdown table. Example::

    python benchmarks/bench_exports.py --threads 2 --max-points 100000
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fourdnex_core.geometry.export_cameras import CameraSet
from fourdnex_core.geometry.export_scene import ExportOptions, ExportPaths, export_scene
from fourdnex_core.geometry.pointcloud import PointFilter, ScenePointClouds
from fourdnex_core.geometry.synthetic import make_synthetic_scene
from fourdnex_core.scene_file import Scene


def synthetic_scene(frames: int, height: int, width: int) -> Scene:
    """A scene with true cameras and depth: what post-optimization leaves."""
    truth = make_synthetic_scene(frames, height, width, seed=7)
    rgb = (truth.rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Scene(rgb=rgb, xyz=truth.xyz.numpy(), depth=truth.depth.numpy(), K=truth.K.numpy(),
                 cams2world=truth.cams2world.numpy(), valid=truth.valid.numpy())


def formats(out: Path) -> dict[str, ExportPaths]:
    return {
        "PLY per frame": ExportPaths(ply=out / "ply"),
        "GLB (animated POINTS)": ExportPaths(glb=out / "points.glb"),
        "cameras.json": ExportPaths(cameras_json=out / "cameras.json"),
        "Nerfstudio (transforms.json + images)": ExportPaths(dataset=out, nerfstudio=True),
        "COLMAP binary (+ images)": ExportPaths(dataset=out, colmap="binary"),
        "COLMAP text (+ images)": ExportPaths(dataset=out, colmap="text"),
        "Gaussian splats per frame (SH 0)": ExportPaths(splats=out / "splats"),
        "Rerun .rrd": ExportPaths(rerun=out / "points.rrd"),
    }


def disk_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def timed(scene: Scene, clouds, paths: ExportPaths, options: ExportOptions, cameras: CameraSet, out: Path,
          repeats: int) -> tuple[float, int]:
    """Median seconds of ``repeats`` exports into a fresh ``out``, and the bytes written."""
    seconds, size = [], 0
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        start = time.perf_counter()
        export_scene(scene, clouds, paths, options, cameras)
        seconds.append(time.perf_counter() - start)
        size = disk_bytes(out)
    return statistics.median(seconds), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="49x480x720", help="FRAMESxHEIGHTxWIDTH (default: 49x480x720)")
    parser.add_argument("--max-points", type=int, default=100_000, help="point budget per frame (CLI default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frames, height, width = (int(part) for part in args.shape.split("x"))
    start = time.perf_counter()
    scene = synthetic_scene(frames, height, width)
    print(f"scene {frames} x {height} x {width} built in {time.perf_counter() - start:.1f} s")
    cameras = CameraSet(scene.K, scene.cams2world, width, height)
    lazy = ScenePointClouds(scene, PointFilter(), args.max_points)
    start = time.perf_counter()
    clouds = list(lazy)
    build = time.perf_counter() - start
    points = sum(len(cloud) for cloud in clouds)
    options = ExportOptions(fps=24.0, colmap_max_points=args.max_points, ply_file_path=None)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        for name, paths in formats(root / "out").items():
            seconds, size = timed(scene, clouds, paths, options, cameras, root / "out", args.repeats)
            rows.append((name, seconds, size))
        everything = ExportPaths(ply=root / "all" / "ply", glb=root / "all" / "points.glb",
                                 splats=root / "all" / "splats", rerun=root / "all" / "points.rrd",
                                 cameras_json=root / "all" / "cameras.json", dataset=root / "all", nerfstudio=True,
                                 colmap="binary")
        all_seconds, all_size = timed(scene, lazy, everything, options, cameras, root / "all", 1)
    load = os.getloadavg()
    print(f"\n{platform.processor() or platform.machine()}, {args.threads} torch threads, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; budget {args.max_points} points per frame "
          f"({points} points in {frames} frames kept after the filters); COLMAP points3D: frame 0\n")
    print("| export | seconds | on disk |")
    print("|---|---:|---:|")
    print(f"| point clouds (filters + budget), all frames | {build:.2f} | - |")
    for name, seconds, size in rows:
        print(f"| {name} | {seconds:.2f} | {size / 2**20:.1f} MiB |")
    print(f"| every format in one pass (clouds built on the way, `fourdnex export --all`) | {all_seconds:.2f} | "
          f"{all_size / 2**20:.1f} MiB |")


if __name__ == "__main__":
    main()
