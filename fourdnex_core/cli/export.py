"""``fourdnex export DIR``: a scene's point clouds and cameras in the formats other tools read.

Reads ``DIR/scene.npz`` (re-projecting points from depth and cameras when post-optimization has
run, else using the raw point maps) and writes, into ``DIR/export`` or ``--out``::

    ply/frame_00000.ply ...       --ply      binary PLY per frame (OpenCV axes)
    points.glb                    --glb      one POINTS node per frame, animated at --fps (glTF axes)
    cameras.json                  --cameras  OpenCV intrinsics and per-frame poses
    transforms.json, images/      --cameras  Nerfstudio cameras (OpenGL axes) and the RGB frames
    sparse/0/, images/            --colmap   COLMAP sparse model (binary, or text) and the RGB frames
    splats/frame_00000.ply ...    --splats   Gaussian splats per frame (3DGS PLY layout)
    points.rrd                    --rerun    Rerun recording: points, cameras, RGB and depth per frame

Without a format flag: PLY, GLB and, when the scene has cameras, the camera files; ``--all``:
every format the scene and the installed packages support. Every argument is checked, and an
earlier export in the folder refused (unless ``--overwrite``), before anything is written.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from fourdnex_core.atomic_write import check_output_folder
from fourdnex_core.geometry import export_rerun, export_splats
from fourdnex_core.geometry.export_colmap import point_frames
from fourdnex_core.geometry.export_scene import COLMAP_MODEL, ExportOptions, ExportPaths, check_export, export_scene
from fourdnex_core.geometry.point_maps import camera_set
from fourdnex_core.geometry.pointcloud import PointFilter, ScenePointClouds
from fourdnex_core.scene_file import load_scene

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
        "export", help="write a scene's point clouds and cameras (PLY, GLB, JSON, COLMAP, splats, Rerun)",
        description="Export DIR/scene.npz for other tools: per-frame PLY, one GLB with a POINTS node per frame, "
        "cameras.json (OpenCV) and Nerfstudio transforms.json, a COLMAP sparse model, Gaussian-splat PLYs and a "
        "Rerun recording. Without a format flag, writes PLY, GLB and (when the scene has cameras) the camera "
        "files; --all writes every format the scene and the installed packages support.")
    parser.add_argument("scene_dir", type=Path, metavar="DIR", help=f"folder holding {SCENE_FILE} (or the file)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: DIR/export)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the earlier export's files of the formats asked for now, each file and "
                             "folder whole; those of other formats stay (default: refuse)")
    formats = parser.add_argument_group("formats")
    formats.add_argument("--all", action="store_true", help="every format below that the scene supports")
    formats.add_argument("--ply", action="store_true", help="write ply/frame_NNNNN.ply")
    formats.add_argument("--glb", action="store_true", help="write points.glb")
    formats.add_argument("--cameras", action="store_true", help="write cameras.json, transforms.json and images/")
    formats.add_argument("--colmap", nargs="?", const="binary", choices=("binary", "text"), default=None,
                         help=f"write a COLMAP sparse model in {COLMAP_MODEL}/ (binary, or text) and images/")
    formats.add_argument("--colmap-stride", type=int, default=None, metavar="K",
                         help="COLMAP points3D from every K-th frame, --max-points in all; 0: frame 0 only (default: 0)")
    formats.add_argument("--splats", action="store_true", help="write splats/frame_NNNNN.ply (3DGS layout; SciPy)")
    formats.add_argument("--splat-sh-degree", type=int, choices=export_splats.SH_DEGREES, default=None,
                         help="0: colour only, as SuperSplat reads it; 3: plus 45 zero f_rest_* as the original "
                         "3DGS code expects (default: 0)")
    formats.add_argument("--rerun", action="store_true", help="write points.rrd (Rerun; rerun-sdk)")
    parser.add_argument("--fps", type=float, default=24.0,
                        help="GLB animation rate, one frame shown at a time; 0 shows all frames at once (default: 24)")
    add_point_options(parser, max_points_default=100_000)
    return parser


def chosen_formats(args: argparse.Namespace, has_cameras: bool) -> dict[str, bool]:
    """Which formats to write; the flags' combinations checked."""
    if args.colmap_stride is not None and not (args.colmap or args.all):
        raise ValueError("--colmap-stride applies to the COLMAP model only; add --colmap (or --all).")
    if args.splat_sh_degree is not None and not (args.splats or args.all):
        raise ValueError("--splat-sh-degree applies to the splats only; add --splats (or --all).")
    if args.fps < 0:
        raise ValueError(f"--fps must be >= 0, got {args.fps}.")
    point_frames(1, args.colmap_stride or 0)  # the stride's own check
    flags = {"ply": args.ply, "glb": args.glb, "cameras": args.cameras, "colmap": bool(args.colmap),
             "splats": args.splats, "rerun": args.rerun}
    if args.all:
        flags = {name: True for name in flags}
        flags.update(cameras=has_cameras, colmap=has_cameras,
                     splats=_installed(export_splats.check_available), rerun=_installed(export_rerun.check_available))
    elif not any(flags.values()):
        flags.update(ply=True, glb=True, cameras=has_cameras)
        if not has_cameras:
            logger.info("The scene has no cameras, so none were exported; run `fourdnex postopt` to recover them.")
    return flags


def _installed(check) -> bool:
    try:
        check()
    except ImportError as error:  # missing, or of another version
        logger.info("%s (left out of --all)", error)
        return False
    return True


def output_names(flags: dict[str, bool]) -> list[str]:
    """The files and folders an export with ``flags`` writes into its folder."""
    names = {"ply": ["ply"], "glb": ["points.glb"], "cameras": ["cameras.json", "transforms.json", "images"],
             "colmap": ["sparse", "images"], "splats": ["splats"], "rerun": ["points.rrd"]}
    return sorted({name for key, on in flags.items() if on for name in names[key]})


def run(args: argparse.Namespace) -> int:
    source = scene_path(args.scene_dir)
    scene = load_scene(source)
    scene.check_points(source)
    has_cameras = scene.K is not None and scene.cams2world is not None
    flags = chosen_formats(args, has_cameras)
    if (flags["cameras"] or flags["colmap"]) and not has_cameras:
        camera_set(scene, source)  # the error naming the file and `fourdnex postopt`
    cameras = camera_set(scene, source) if has_cameras else None
    point_filter = point_filter_from_args(args)
    out = args.out or source.parent / "export"
    paths = ExportPaths(ply=out / "ply" if flags["ply"] else None, glb=out / "points.glb" if flags["glb"] else None,
                        splats=out / "splats" if flags["splats"] else None,
                        rerun=out / "points.rrd" if flags["rerun"] else None,
                        cameras_json=out / "cameras.json" if flags["cameras"] else None, dataset=out,
                        nerfstudio=flags["cameras"], colmap=(args.colmap or "binary") if flags["colmap"] else None)
    options = ExportOptions(fps=args.fps or None, colmap_stride=args.colmap_stride or 0,
                            colmap_max_points=args.max_points or None, splat_sh_degree=args.splat_sh_degree or 0,
                            ply_file_path="ply/frame_00000.ply" if flags["ply"] else None)
    check_export(paths, options, cameras, scene.num_frames)
    check_output_folder(out, output_names(flags), overwrite=args.overwrite)
    clouds = ScenePointClouds(scene, point_filter, args.max_points, args.downsample)
    export_scene(scene, clouds, paths, options, cameras,
                 frames=lambda indices: tqdm(indices, desc="export", unit="frame"))
    logger.info("Exported %d frames to %s.", scene.num_frames, out)
    return 0
