"""Benchmark: post-optimization, ours (linear start + robust Levenberg-Marquardt, camera model
chosen from the data) against the release-style Adam reference (1500 iterations, ``postopt_reference.py`` beside this
script), on synthetic
scenes with known answers, including cameras the default model does not fit.

For each scene size and condition it times our solver (the default call, which picks the camera
model from the data, and the same with the default model forced) and, where asked, the Adam
reference, and reports the largest camera rotation error, the largest focal error (each frame
against its own true focal), the largest principal-point error, the median relative depth error
(over valid, non-outlier pixels), the camera model fitted, and the peak memory our solver adds.
Prints a markdown table. Example::

    python benchmarks/bench_postopt.py --threads 2 --shapes 49x120x180 --repeats 3
    python benchmarks/bench_postopt.py --threads 2 --shapes 49x480x720 --no-adam --repeats 3
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fourdnex_core.geometry.cameras import rotation_angle_degrees
from fourdnex_core.geometry.postopt import PostOptResult, post_optimize
from fourdnex_core.geometry.synthetic import SyntheticScene, make_synthetic_scene
from postopt_reference import RELEASE_ITERATIONS, post_optimize_reference  # beside this script

NOISY = {"noise": 0.01, "outlier_fraction": 0.05, "invalid_fraction": 0.01}
CLEAN = {"noise": 0.0, "outlier_fraction": 0.0, "invalid_fraction": 0.0}


def conditions(height: int, width: int) -> dict[str, dict]:
    """Scene options per condition. Offsets scale with the image: 3 px and 2 px at 120 x 180."""
    focal = (width / 2.0) / math.tan(math.radians(30.0))  # a 60 degree view
    off_centre = ((width - 1) / 2 + width / 60, (height - 1) / 2 - height / 60)
    return {
        "clean": CLEAN,
        "noisy": NOISY,
        "noisy-f1.2W": {**NOISY, "focal": 1.2 * width},
        "off-centre pp + fy 2 % (clean)": {**CLEAN, "principal_point": off_centre, "focal": (focal, 1.02 * focal)},
        "off-centre pp": {**NOISY, "principal_point": off_centre},
        "fx != fy (fy 2 % longer)": {**NOISY, "focal": (focal, 1.02 * focal)},
        "zoom 1.3x": {**NOISY, "zoom": 1.3},
        "large moving objects": {**NOISY, "moving_scale": 3.0},
    }


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        frames, height, width = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"shape must look like 49x120x180, got {text!r}") from error
    return frames, height, width


def errors(result: PostOptResult, scene: SyntheticScene) -> dict[str, float]:
    """Largest rotation error (deg), focal error (%, per frame), principal-point error (px);
    median relative depth error (%)."""
    rotation = rotation_angle_degrees(result.cams2world[:, :3, :3].double(), scene.cams2world[:, :3, :3].double())
    fitted, truth = result.intrinsics.double(), scene.intrinsics.double()
    focal = (torch.stack((fitted[:, 0, 0], fitted[:, 1, 1])) / torch.stack((truth[:, 0, 0], truth[:, 1, 1])) - 1).abs()
    centre = (fitted[:, :2, 2] - truth[:, :2, 2]).norm(dim=-1)
    usable = result.valid & ~scene.outliers
    depth = ((result.depth.double() - scene.depth.double()).abs() / scene.depth.double())[usable]
    return {"rotation": float(rotation.max()), "focal": 100 * float(focal.max()), "centre": float(centre.max()),
            "depth": 100 * float(depth.median())}


def _peak_rss_reset() -> bool:
    """Reset the process's peak resident size (Linux: /proc/self/clear_refs); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def timed(solve, repeats: int) -> tuple[PostOptResult, list[float]]:
    """Run ``solve`` ``repeats`` times. Returns the last result and the wall-clock seconds of each run."""
    wall = []
    for _ in range(repeats):
        result = None  # the previous result's arrays are freed before the next run
        started = time.perf_counter()
        result = solve()
        wall.append(time.perf_counter() - started)
    return result, wall


def peak_memory(xyz: torch.Tensor, threads: int) -> float | None:
    """Peak resident memory (GiB) one call of ``post_optimize(xyz)`` adds to a fresh process that
    already holds xyz (measured in a child process: freed memory that the allocator keeps would
    hide a second run's peak). None where /proc cannot tell."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "xyz.pt"
        torch.save(xyz, path)
        child = subprocess.run([sys.executable, __file__, "--peak-of", str(path), "--threads", str(threads)],
                               capture_output=True, text=True, check=False)
    lines = child.stdout.strip().splitlines()
    return float(lines[-1]) if child.returncode == 0 and lines and lines[-1] != "None" else None


def _report_peak(path: str) -> None:
    xyz = torch.load(path, weights_only=True)
    post_optimize(make_synthetic_scene(2, 12, 18).xyz)  # imports and first-call setup are not the solve's
    if not _peak_rss_reset():
        print("None")
        return
    before = _rss_kib("VmRSS")
    post_optimize(xyz)
    print((_rss_kib("VmHWM") - before) / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[(49, 120, 180)], help="sizes as FxHxW")
    parser.add_argument("--conditions", nargs="+", default=None, help="a subset of the conditions, by name")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of our solver per scene (median shown)")
    parser.add_argument("--adam-iterations", type=int, default=RELEASE_ITERATIONS)
    parser.add_argument("--no-adam", action="store_true", help="skip the Adam reference (slow at full size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)  # the child process of peak_memory
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_of:
        _report_peak(args.peak_of)
        return

    warmup = make_synthetic_scene(2, 12, 18, seed=args.seed)
    post_optimize(warmup.xyz)
    post_optimize_reference(warmup.xyz, iterations=2, progress=False)

    print(f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, {os.cpu_count()} cores visible; "
          f"load average {os.getloadavg()[0]:.1f} at start. Ours: median (min - max) of {args.repeats} runs; "
          f"Adam ({args.adam_iterations} iterations, lr 5e-3): one run. Peak: the resident memory one call of ours "
          "(default) adds to a fresh process holding the scene (the scene itself not counted).")
    print()
    print("| scene F x H x W | condition | solver | wall s | peak GiB | iterations | camera model fitted | "
          "rotation err (max, deg) | focal err (max, %) | principal point err (max, px) | depth err (median, %) | "
          "load |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for frames, height, width in args.shapes:
        table = conditions(height, width)
        for condition in args.conditions or list(table):
            scene = make_synthetic_scene(frames, height, width, seed=args.seed, **table[condition])
            runs = [
                ("ours (default: model from the data)", lambda: post_optimize(scene.xyz), args.repeats),
                ("ours, default model forced", lambda: post_optimize(scene.xyz, fix_principal_point=True, zoom=False),
                 1),
            ]
            if not args.no_adam:
                runs.append(("Adam reference", lambda: post_optimize_reference(
                    scene.xyz, iterations=args.adam_iterations, progress=False), 1))
            for name, solve, repeats in runs:
                result, wall = timed(solve, repeats)
                peak = peak_memory(scene.xyz, args.threads) if name.startswith("ours (default") else None
                error = errors(result, scene)
                model = _model_name(result) if name.startswith("ours") else "release (shared fx, fy; centre)"
                times = f"{statistics.median(wall):.3f}" + (f" ({min(wall):.3f} - {max(wall):.3f})"
                                                            if len(wall) > 1 else "")
                memory = f"{peak:.2f}" if peak is not None else ""
                print(f"| {frames} x {height} x {width} | {condition} | {name} | {times} | {memory} | "
                      f"{result.iterations} | {model} | {error['rotation']:.2g} | {error['focal']:.2g} | "
                      f"{error['centre']:.2g} | {error['depth']:.2g} | {os.getloadavg()[0]:.1f} |", flush=True)
    print()
    print(f"Load average at the end: {os.getloadavg()[0]:.1f}.")


def _model_name(result: PostOptResult) -> str:
    model = result.camera_model
    parts = {"shared": "shared fx, fy", "zoom": "focal per frame", "per frame": "K per frame",
             "known": "known focal"}[model.focal]
    parts += "; pp fitted" if model.principal_point == "fitted" else "; pp centre"
    return parts


if __name__ == "__main__":
    main()
