"""Benchmark: point splatting throughput, and streaming PLY/GLB export of a full-size scene.

Builds a synthetic 49 x 480 x 720 scene (a wavy depth map per frame, unprojected with a moving
camera: 345,600 points per frame, ~17M in all), then

* renders every frame into a 512 x 512 view with :func:`splat_points` for each point size;
* (``--writers``) writes every frame as PLY and all frames as one GLB, with the peak memory
  traced by ``tracemalloc`` (numpy reports its buffers to it) to show that the writers stream.

Prints markdown tables. Example::

    python benchmarks/bench_render.py --threads 2 --writers
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from fourdnex_core.geometry.cameras import backproject
from fourdnex_core.geometry.export_glb import GlbPointsWriter
from fourdnex_core.geometry.export_ply import write_ply
from fourdnex_core.geometry.pointcloud import PointCloud
from fourdnex_core.geometry.render import fit_intrinsics, splat_points


def synthetic_clouds(frames: int, height: int, width: int) -> tuple[list[PointCloud], np.ndarray, np.ndarray]:
    """Per-frame clouds of a wavy surface seen by a camera sliding right; also K [3, 3] and cams2world [F, 4, 4]."""
    rng = np.random.default_rng(0)
    K = np.array([[1.2 * width, 0, (width - 1) / 2], [0, 1.2 * width, (height - 1) / 2], [0, 0, 1]], np.float32)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    clouds, poses = [], []
    for index in range(frames):
        depth = 3.0 + 0.4 * np.sin(columns / 37.0 + 0.1 * index) * np.cos(rows / 23.0) \
            + 0.01 * rng.standard_normal((height, width)).astype(np.float32)
        pose = np.eye(4, dtype=np.float32)
        pose[0, 3] = 0.01 * index
        xyz = backproject(torch.from_numpy(depth), torch.from_numpy(K), torch.from_numpy(pose)).numpy()
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        clouds.append(PointCloud(xyz.reshape(-1, 3), rgb.reshape(-1, 3)))
        poses.append(pose)
    return clouds, K, np.stack(poses)


def bench_splatting(clouds: list[PointCloud], K: np.ndarray, poses: np.ndarray, source_size: tuple[int, int],
                    size: int, point_size: int, device: str, repeats: int) -> dict[str, float]:
    """Seconds (best and median of ``repeats`` passes; CPU seconds of the best pass) to splat every
    cloud from its own camera into a size x size frame, after one warm-up frame; and the mean share
    of pixels covered."""
    K_out = fit_intrinsics(torch.from_numpy(K), source_size, (size, size))
    world2cams = torch.linalg.inv(torch.from_numpy(poses)).to(device)
    tensors = [(torch.from_numpy(c.positions).to(device), torch.from_numpy(c.colors).to(device)) for c in clouds]
    splat_points(*tensors[0], K_out, world2cams[0], size, size, point_size)
    passes, cpu_seconds, coverage = [], [], 0.0
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        coverage = 0.0
        for (points, colors), world2cam in zip(tensors, world2cams, strict=True):
            rendering = splat_points(points, colors, K_out, world2cam, size, size, point_size)
            coverage += rendering.coverage.float().mean().item()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        passes.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    points = sum(len(c) for c in clouds)
    best = int(np.argmin(passes))
    return {"best": passes[best], "median": float(np.median(passes)), "cpu": cpu_seconds[best], "points": points,
            "coverage": coverage / len(clouds)}


def bench_writers(clouds: list[PointCloud]) -> list[tuple[str, float, float, float]]:
    """(format, seconds, file MB, peak traced MB) for streaming PLY files and one GLB."""
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name in ("PLY (one file per frame)", "GLB (one file, animated)"):
            tracemalloc.start()
            start = time.perf_counter()
            if name.startswith("PLY"):
                paths = [write_ply(Path(folder) / f"frame_{i:05d}.ply", cloud) for i, cloud in enumerate(clouds)]
            else:
                with GlbPointsWriter(Path(folder) / "points.glb", fps=24) as writer:
                    for cloud in clouds:
                        writer.add_frame(cloud)
                paths = [writer.path]
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            size = sum(path.stat().st_size for path in paths)
            results.append((name, seconds, size / 1e6, peak / 1e6))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--size", type=int, default=512, help="square output side")
    parser.add_argument("--point-sizes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the scene per point size")
    parser.add_argument("--writers", action="store_true", help="also benchmark the PLY and GLB writers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clouds, K, poses = synthetic_clouds(args.frames, args.height, args.width)
    total = sum(len(c) for c in clouds)
    print(f"Scene: {args.frames} x {args.height} x {args.width} = {total:,} points; output {args.size} x {args.size}; "
          f"device {args.device}, torch {torch.__version__}, {args.threads} threads, {platform.machine()}, "
          f"{os.cpu_count()} cores visible")
    print()
    print(f"Load average before timing: {os.getloadavg()[0]:.1f} (best and median of {args.repeats} passes)")
    print()
    print("| point size | frames | points | best s | median s | CPU s (best pass) | ms / frame (best) "
          "| points / s (best) | coverage |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for point_size in args.point_sizes:
        result = bench_splatting(clouds, K, poses, (args.height, args.width), args.size, point_size, args.device,
                                 args.repeats)
        print(f"| {point_size} | {args.frames} | {result['points']:,} | {result['best']:.2f} | "
              f"{result['median']:.2f} | {result['cpu']:.2f} | {1000 * result['best'] / args.frames:.1f} | "
              f"{result['points'] / result['best'] / 1e6:.1f} M | {100 * result['coverage']:.0f} % |")
    if args.writers:
        scene_mb = sum(c.positions.nbytes + c.colors.nbytes for c in clouds) / 1e6
        print()
        print(f"Writers (scene held in memory: {scene_mb:.0f} MB of points):")
        print()
        print("| format | seconds | file MB | MB / s | peak traced memory MB |")
        print("|---|---:|---:|---:|---:|")
        for name, seconds, size, peak in bench_writers(clouds):
            print(f"| {name} | {seconds:.2f} | {size:.0f} | {size / seconds:.0f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
