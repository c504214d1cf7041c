"""Benchmark: post-optimization, ours (linear init + robust Levenberg-Marquardt) against the
release-style Adam reference (1500 iterations), on synthetic scenes with known answers.

For each scene size and condition it times both solvers on the same XYZ and reports the
largest camera rotation error, the focal error and the median relative depth error (over
valid, non-outlier pixels). Conditions: ``clean`` (exact XYZ, 60 degree field of view),
``noisy`` (1 % noise, 5 % outliers, 1 % NaN/inf points) and ``noisy-f1.2W`` (the same with the
true focal at the release's initial guess, fx = 1.2 W, so Adam starts from the right fx). Ours
is timed as the best and median of ``--repeats`` runs; the Adam reference once. Prints a
markdown table. Example::

    python benchmarks/bench_postopt.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from fourdnex_core.geometry.cameras import rotation_angle_degrees
from fourdnex_core.geometry.postopt import PostOptResult, post_optimize
from fourdnex_core.geometry.postopt.reference import RELEASE_ITERATIONS, post_optimize_reference
from fourdnex_core.geometry.synthetic import SyntheticScene, make_synthetic_scene

NOISY = {"noise": 0.01, "outlier_fraction": 0.05, "invalid_fraction": 0.01}
CONDITIONS = {  # scene options, and the focal as a multiple of the width (None: 60 degree view)
    "clean": ({"noise": 0.0, "outlier_fraction": 0.0, "invalid_fraction": 0.0}, None),
    "noisy": (NOISY, None),
    "noisy-f1.2W": (NOISY, 1.2),
}


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        frames, height, width = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"shape must look like 49x120x180, got {text!r}") from error
    return frames, height, width


def errors(result: PostOptResult, scene: SyntheticScene) -> dict[str, float]:
    """Largest rotation error (deg), largest focal error (%), median relative depth error (%)."""
    rotation = rotation_angle_degrees(result.cams2world[:, :3, :3].double(), scene.cams2world[:, :3, :3].double())
    fitted = torch.stack((result.intrinsics[:, 0, 0], result.intrinsics[:, 1, 1])).double()
    focal = (fitted / scene.K[0, 0].double() - 1).abs()
    usable = result.valid & ~scene.outliers
    depth = ((result.depth.double() - scene.depth.double()).abs() / scene.depth.double())[usable]
    return {"rotation": float(rotation.max()), "focal": 100 * float(focal.max()), "depth": 100 * float(depth.median())}


def timed(solve, repeats: int) -> tuple[PostOptResult, list[float], list[float]]:
    """Run ``solve`` ``repeats`` times. Returns the last result, wall-clock and process CPU seconds."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = solve()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return result, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[(13, 60, 90), (49, 120, 180)],
                        help="scene sizes as FxHxW")
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of our solver per scene")
    parser.add_argument("--adam-iterations", type=int, default=RELEASE_ITERATIONS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    warmup = make_synthetic_scene(2, 12, 18, seed=args.seed)
    post_optimize(warmup.xyz)
    post_optimize_reference(warmup.xyz, iterations=2, progress=False)

    print(f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, {os.cpu_count()} cores visible; "
          f"load average {os.getloadavg()[0]:.1f} at start. Ours: wall best / median, CPU best of {args.repeats} runs; "
          f"Adam ({args.adam_iterations} iterations, lr 5e-3): one run.")
    print()
    print("| scene F x H x W | condition | solver | wall s | CPU s | iterations | rotation err (max, deg) | "
          "focal err (max, %) | depth err (median, %) | speed-up (wall) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for frames, height, width in args.shapes:
        for condition in args.conditions:
            options, focal_factor = CONDITIONS[condition]
            focal = None if focal_factor is None else focal_factor * width
            scene = make_synthetic_scene(frames, height, width, focal=focal, seed=args.seed, **options)
            ours, ours_wall, ours_cpu = timed(lambda: post_optimize(scene.xyz), args.repeats)
            adam, adam_wall, adam_cpu = timed(
                lambda: post_optimize_reference(scene.xyz, iterations=args.adam_iterations, progress=False), 1)
            best = min(ours_wall)
            rows = (
                ("ours (LM)", f"{best:.3f} / {statistics.median(ours_wall):.3f}", f"{min(ours_cpu):.2f}", ours, ""),
                ("Adam reference", f"{adam_wall[0]:.1f}", f"{adam_cpu[0]:.1f}", adam, f"{adam_wall[0] / best:.0f}x"),
            )
            for name, wall, cpu, result, speedup in rows:
                error = errors(result, scene)
                print(f"| {frames} x {height} x {width} | {condition} | {name} | {wall} | {cpu} | {result.iterations} | "
                      f"{error['rotation']:.2g} | {error['focal']:.2g} | {error['depth']:.2g} | {speedup} |",
                      flush=True)
    print()
    print(f"Load average at the end: {os.getloadavg()[0]:.1f}.")


if __name__ == "__main__":
    main()
