"""``fourdnex postopt DIR``: add cameras, intrinsics, depth and residuals to ``DIR/scene.npz``.

``DIR`` may also be the path of the ``.npz`` file itself. The scene's ``confidence`` array, when
present, weights each point (and its ``mask`` still drops points); ``--min-confidence`` drops
points below a threshold. Only the derived arrays (depth, K, cams2world, residuals, valid) are
written; the inputs (rgb, xyz, mask, confidence) are never changed, so every run starts from the
same points whatever an earlier run dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fourdnex_core.cli.export import SCENE_FILE, scene_path
from fourdnex_core.geometry.point_maps import cameras_from_postopt, scene_with_cameras
from fourdnex_core.geometry.pointcloud import confidence_within_mask
from fourdnex_core.geometry.postopt import PostOptResult, post_optimize
from fourdnex_core.scene_file import Scene, load_scene, save_scene

DEFAULT_ITERATIONS = 20


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "postopt",
        help="recover cameras, intrinsics and depth from a scene's XYZ",
        description="Read DIR/scene.npz, fit one pinhole K (with a fitted principal point or a focal per frame "
                    "when the data supports them), a camera per frame and a depth per pixel to its XYZ "
                    "(paper eq. 9-10), and write depth, K, cams2world, residuals and valid (the points used) into the "
                    "file; its rgb, xyz, mask and confidence are never changed, so it can run again with other "
                    "settings. The scene's confidence array, when present, weights the points.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR",
                        help=f"folder holding {SCENE_FILE} (written by `fourdnex generate`), or the .npz file")
    parser.add_argument("--focal", type=float, default=None, help="known focal length in pixels, kept fixed")
    parser.add_argument("--principal-point", choices=("auto", "centre", "fitted"), default="auto",
                        help="keep the principal point at the image centre, fit it, or (auto, default) fit it only "
                             "when the data supports it")
    parser.add_argument("--free-principal-point", action="store_const", const="fitted", dest="principal_point",
                        help="the same as --principal-point fitted")
    parser.add_argument("--zoom", choices=("auto", "yes", "no"), default="auto",
                        help="fit a focal per frame (a zoom) on top of the shared K: yes, no, or (auto, default) only "
                             "when the data supports it; a zoom writes K as [F, 3, 3]")
    parser.add_argument("--robust", choices=("cauchy", "huber", "none"), default="cauchy",
                        help="robust loss against outlier points (default: cauchy)")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help=f"most solver iterations; it stops when converged (default: {DEFAULT_ITERATIONS})")
    parser.add_argument("--min-confidence", type=float, default=0.0, metavar="C",
                        help="drop points whose confidence is below C (needs a confidence array in the scene)")
    return parser


def run(args: argparse.Namespace) -> int:
    path = scene_path(args.directory)
    scene = load_scene(path)
    dataclasses.replace(scene, valid=None).check_points(path)  # the inputs, not an earlier run's selection
    xyz = torch.from_numpy(scene.xyz)
    fix_principal_point = {"auto": None, "centre": True, "fitted": False}[args.principal_point]
    if args.min_confidence and scene.confidence is None:
        raise ValueError(f"--min-confidence needs a confidence array, and {path} has none; drop the option.")
    mask = _point_mask(scene, args.min_confidence)
    started = time.perf_counter()
    with tqdm(total=args.iterations, desc="post-optimization", unit="it") as bar:
        result = post_optimize(xyz, mask, focal=args.focal, fix_principal_point=fix_principal_point,
                               zoom={"auto": None, "yes": True, "no": False}[args.zoom], iterations=args.iterations,
                               robust=args.robust, callback=_step_bar(bar))
        bar.total = bar.n  # converged early: show the bar complete
        bar.refresh()
    elapsed = time.perf_counter() - started
    save_scene(scene_with_cameras(scene, cameras_from_postopt(result)), path)
    _print_summary(result, elapsed, path)
    return 0


def _point_mask(scene: Scene, min_confidence: float = 0.0) -> torch.Tensor | None:
    """What post-optimization gets as mask [F, H, W]: the confidence when the scene has one (0
    outside the scene's mask and below ``min_confidence``), else the bool mask, else None."""
    if scene.confidence is None:
        return torch.from_numpy(scene.mask) if scene.mask is not None else None
    if min_confidence < 0:
        raise ValueError(f"--min-confidence must be >= 0, got {min_confidence}.")
    confidence = confidence_within_mask(scene.confidence, scene.mask)
    with np.errstate(invalid="ignore"):  # NaN confidence is below any threshold: dropped
        return torch.from_numpy(np.where(confidence >= min_confidence, confidence, np.float32(0.0)))


def _step_bar(bar: tqdm) -> Callable[[int, float], None]:
    """A post_optimize callback that advances ``bar`` one iteration and shows the robust cost."""
    def step(iteration: int, cost: float) -> None:
        bar.update(iteration - bar.n)
        bar.set_postfix(cost=f"{cost:.3e}", refresh=False)
    return step


def _print_summary(result: PostOptResult, elapsed: float, path: Path) -> None:
    frames, height, width = result.depth.shape
    residuals = result.residuals
    print(f"post-optimized {frames} frames of {height}x{width} in {elapsed:.2f} s ({result.iterations} iterations)")
    if result.camera_model is not None:
        print(f"  camera model: {result.camera_model}")
    K = result.intrinsics
    fx, fy, cx, cy = (K[:, row, column] for row, column in ((0, 0), (1, 1), (0, 2), (1, 2)))
    if result.shared_intrinsics:
        print(f"  K: fx {float(fx[0]):.2f}  fy {float(fy[0]):.2f}  cx {float(cx[0]):.2f}  cy {float(cy[0]):.2f} "
              "(pixels)")
    else:
        print(f"  K per frame: fx {float(fx.min()):.2f} .. {float(fx.max()):.2f}  fy {float(fy.min()):.2f} .. "
              f"{float(fy.max()):.2f}  cx {float(cx.mean()):.2f}  cy {float(cy.mean()):.2f} (pixels)")
    print(f"  median point error per frame: {float(residuals.median()):.4g} "
          f"(range {float(residuals.min()):.4g} .. {float(residuals.max()):.4g}, scene units)")
    print(f"  points left out (non-finite or masked): {int(result.num_invalid.sum())}")
    print(f"  wrote depth, K, cams2world, residuals, valid to {path} (its rgb, xyz, mask, confidence unchanged)")
