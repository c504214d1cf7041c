"""``fourdnex export DIR``: a scene's point clouds as PLY and GLB, its cameras as JSON.

Reads ``DIR/scene.npz`` (re-projecting points from depth and cameras when post-optimization has
run, else using the raw point maps) and writes, into ``DIR/export`` or ``--out``::

    ply/frame_00000.ply ...       binary PLY per frame (OpenCV axes)
    points.glb                    one POINTS node per frame, animated at --fps (glTF axes)
    cameras.json                  OpenCV intrinsics and per-frame poses
    transforms.json, images/      Nerfstudio cameras (OpenGL axes) and the RGB frames
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

from tqdm import tqdm

from fourdnex_core.geometry.export_cameras import write_cameras_json, write_transforms_json
from fourdnex_core.geometry.export_glb import GlbPointsWriter
from fourdnex_core.geometry.export_ply import write_ply
from fourdnex_core.geometry.point_maps import camera_set
from fourdnex_core.geometry.pointcloud import PointFilter, ScenePointClouds
from fourdnex_core.scene_file import Scene, load_scene
from fourdnex_core.video_io import write_frames

logger = logging.getLogger(__name__)

SCENE_FILE = "scene.npz"


def scene_path(directory: Path) -> Path:
    """``DIR/scene.npz`` for a folder, or the path itself when it names an .npz file."""
    if directory.suffix == ".npz":
        return directory
    if not directory.is_dir():
        raise FileNotFoundError(f"No scene folder at {directory}; pass the folder that holds {SCENE_FILE}.")
    return directory / SCENE_FILE


def add_point_options(parser: argparse.ArgumentParser, max_points_default: int) -> None:
    """Options that choose which points of each frame are kept (shared with ``fourdnex render``)."""
    group = parser.add_argument_group("points")
    group.add_argument("--max-points", type=int, default=max_points_default, metavar="N",
                       help=f"point budget per frame, 0 keeps all (default: {max_points_default})")
    group.add_argument("--downsample", choices=("stride", "voxel"), default="stride",
                       help="how to meet the budget: every k-th pixel, or voxel averages (default: stride)")
    group.add_argument("--edge-rtol", type=float, default=0.1, metavar="R",
                       help="drop pixels where inverse depth jumps by more than R of its value, 0 keeps them "
                       "(default: 0.1)")
    group.add_argument("--outlier-std", type=float, default=2.0, metavar="S",
                       help="drop points whose relative neighbour spacing is above mean + S std, 0 keeps them "
                       "(default: 2)")
    group.add_argument("--ignore-mask", action="store_true", help="keep points outside the scene's validity mask")


def point_filter_from_args(args: argparse.Namespace) -> PointFilter:
    """The PointFilter chosen by :func:`add_point_options`'s options."""
    if args.max_points < 0 or args.edge_rtol < 0 or args.outlier_std < 0:
        raise ValueError("--max-points, --edge-rtol and --outlier-std must be >= 0 (0 turns each off).")
    return PointFilter(use_mask=not args.ignore_mask, depth_edge_rtol=args.edge_rtol or None,
                       outlier_std_ratio=args.outlier_std or None)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help="write a scene's point clouds (PLY, GLB) and cameras (JSON)",
        description="Export DIR/scene.npz as per-frame PLY files, one GLB with a POINTS node per frame, "
        "and cameras as cameras.json (OpenCV) and Nerfstudio transforms.json. Without --ply/--glb/--cameras, "
        "writes every format the scene supports.")
    parser.add_argument("scene_dir", type=Path, metavar="DIR", help=f"folder holding {SCENE_FILE} (or the file)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: DIR/export)")
    parser.add_argument("--ply", action="store_true", help="write ply/frame_NNNNN.ply")
    parser.add_argument("--glb", action="store_true", help="write points.glb")
    parser.add_argument("--cameras", action="store_true", help="write cameras.json, transforms.json and images/")
    parser.add_argument("--fps", type=float, default=24.0,
                        help="GLB animation rate, one frame shown at a time; 0 shows all frames at once (default: 24)")
    add_point_options(parser, max_points_default=100_000)
    return parser


def run(args: argparse.Namespace) -> int:
    source = scene_path(args.scene_dir)
    scene = load_scene(source)
    scene.check_points(source)
    out = args.out or source.parent / "export"
    has_cameras = scene.K is not None and scene.cams2world is not None
    chosen = args.ply or args.glb or args.cameras
    write_ply_files, write_glb_file = (args.ply, args.glb) if chosen else (True, True)
    cameras = camera_set(scene, source) if args.cameras or (not chosen and has_cameras) else None
    if args.fps < 0:
        raise ValueError(f"--fps must be >= 0, got {args.fps}.")
    clouds = ScenePointClouds(scene, point_filter_from_args(args), args.max_points, args.downsample)
    total_points = 0
    with contextlib.ExitStack() as stack:
        glb = stack.enter_context(GlbPointsWriter(out / "points.glb", args.fps or None)) if write_glb_file else None
        if write_ply_files or write_glb_file:
            for index, cloud in enumerate(tqdm(clouds, desc="export", unit="frame")):
                total_points += len(cloud)
                if write_ply_files:
                    write_ply(out / "ply" / f"frame_{index:05d}.ply", cloud)
                if glb is not None:
                    glb.add_frame(cloud)
    if cameras is not None:
        images = write_frames(out / "images", scene.rgb)
        write_cameras_json(out / "cameras.json", cameras)
        write_transforms_json(out / "transforms.json", cameras, [path.relative_to(out).as_posix() for path in images],
                              ply_file_path="ply/frame_00000.ply" if write_ply_files else None)
    if not chosen and not has_cameras:
        logger.info("The scene has no cameras, so none were exported; run `fourdnex postopt` to recover them.")
    logger.info("Exported %d frames (%d points) to %s.", scene.num_frames, total_points, out)
    return 0
