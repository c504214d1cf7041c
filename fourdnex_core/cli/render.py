"""``fourdnex render DIR --trajectory ...``: a novel-view video of a scene's point clouds.

Trajectories (distances are in units of the first frame's median depth, so the defaults suit any
scene scale):

* ``orbit``: the first camera swung ``--arc-degrees`` around the point it looks at;
* ``dolly``: the first camera moved ``--distance`` along its viewing axis;
* ``path``: the recovered cameras; ``path-offset``: the recovered cameras shifted by ``--offset``
  in their own frames (x right, y down, z forward);
* ``poses``: the cameras of a ``cameras.json`` (``--poses``), e.g. one written by
  ``fourdnex export`` and edited; it also works for scenes without recovered cameras.

View k shows the scene frame at the same point in time (or ``--time-frame`` from every view).
Writes into ``DIR/render`` or ``--out``::

    render.mp4, frames/frame_NNNNN.png   the rendered views
    masks.mp4, masks/frame_NNNNN.png     with --masks: white where no point's splat covers the pixel
                                         (holes, disocclusions: what a video model should fill), else black
    depth.mp4                            with --masks: depth of the visible points, near bright (inverse
                                         depth between its 1st and 99th percentile over the video), holes black
    depth.npz                            with --masks: ``depth`` [N, H, W] float32 camera z, inf in holes

``--no-frames`` leaves out the PNG folders. Files of an earlier run in the output folder are never
replaced unless ``--overwrite`` is given; each file appears whole or not at all.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fourdnex_core.atomic_write import atomic_path, check_output_folder
from fourdnex_core.cli.export import add_point_options, point_filter_from_args, scene_path
from fourdnex_core.geometry.export_cameras import CameraSet, read_cameras_json
from fourdnex_core.geometry.point_maps import camera_set
from fourdnex_core.geometry.point_maps import depth_image
from fourdnex_core.geometry.pointcloud import ScenePointClouds
from fourdnex_core.geometry.render import Rendering, fit_intrinsics, render_views
from fourdnex_core.geometry.trajectories import TRAJECTORIES as LIBRARY_TRAJECTORIES
from fourdnex_core.geometry.trajectories import trajectory, views_intrinsics
from fourdnex_core.scene_file import Scene, load_scene
from fourdnex_core.video_io import frame_path, frame_to_uint8, save_frame, write_frames, write_video

logger = logging.getLogger(__name__)

TRAJECTORIES = (*LIBRARY_TRAJECTORIES, "poses")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "render", help="render a novel-view video of a scene's point clouds",
        description="Splat DIR/scene.npz's point clouds along a camera trajectory; writes render.mp4 and frames/ "
        "(with --masks also the hole masks and the depth).")
    parser.add_argument("scene_dir", type=Path, metavar="DIR", help="folder holding scene.npz (or the file)")
    parser.add_argument("--trajectory", choices=TRAJECTORIES, default="orbit", help="camera path (default: orbit)")
    parser.add_argument("--poses", type=Path, default=None, metavar="CAMERAS_JSON",
                        help="cameras.json for --trajectory poses")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: DIR/render)")
    parser.add_argument("--num-frames", type=int, default=None, metavar="N",
                        help="views for orbit and dolly (default: the scene's frame count)")
    parser.add_argument("--time-frame", type=int, default=None, metavar="T",
                        help="show scene frame T from every view (default: play the scene along the path)")
    parser.add_argument("--arc-degrees", type=float, default=30.0, help="orbit sweep, centred on the first camera")
    parser.add_argument("--distance", type=float, default=0.3, help="dolly travel, + forward (median depths)")
    parser.add_argument("--offset", type=float, nargs=3, default=(0.1, 0.0, 0.0), metavar=("X", "Y", "Z"),
                        help="path-offset shift in camera axes (median depths; default: 0.1 0 0, to the right)")
    parser.add_argument("--width", type=int, default=None, help="output width (default: the scene's)")
    parser.add_argument("--height", type=int, default=None, help="output height (default: the scene's)")
    parser.add_argument("--point-size", type=int, default=1, help="square splat side in pixels (default: 1)")
    parser.add_argument("--background", type=float, nargs=3, default=(0.0, 0.0, 0.0), metavar=("R", "G", "B"),
                        help="background colour in [0, 1] (default: black)")
    parser.add_argument("--fps", type=float, default=24.0, help="video frame rate (default: 24)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device for splatting (default: cuda when available)")
    parser.add_argument("--no-frames", action="store_true",
                        help="write only the videos (render.mp4, masks.mp4, depth.mp4), not the PNG folders")
    parser.add_argument("--masks", action="store_true",
                        help="also write the hole masks (masks.mp4, masks/: white where no point lands) and the "
                        "depth (depth.mp4 near bright, depth.npz in scene units)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an earlier render in the output folder (default: refuse)")
    add_point_options(parser, max_points_default=0)
    return parser


def trajectory_cameras(args: argparse.Namespace, scene: Scene, source: Path) -> CameraSet:
    """The cameras (intrinsics at the scene's size, cams2world [N, 4, 4]) the chosen trajectory renders."""
    if args.trajectory == "poses":
        if args.poses is None:
            raise ValueError("--trajectory poses needs --poses CAMERAS_JSON (e.g. export/cameras.json).")
        return read_cameras_json(args.poses)
    if args.poses is not None:
        raise ValueError(f"--poses is only read with --trajectory poses, not {args.trajectory}.")
    cameras = camera_set(scene, source)
    num_views = args.num_frames or scene.num_frames
    if num_views < 1:
        raise ValueError(f"--num-frames must be at least 1, got {num_views}.")
    poses = trajectory(scene, args.trajectory, num_views, args.arc_degrees, args.distance, args.offset)
    K = views_intrinsics(cameras.K, args.trajectory, poses.shape[0]).numpy()
    return CameraSet(K, poses.numpy(), cameras.width, cameras.height)


def output_names(args: argparse.Namespace) -> tuple[str, ...]:
    """The files and folders a render writes into its output folder."""
    videos = ("render.mp4", "masks.mp4", "depth.mp4", "depth.npz") if args.masks else ("render.mp4",)
    folders = () if args.no_frames else ("frames", "masks") if args.masks else ("frames",)
    return videos + folders


def _saved_frames(renderings: Iterator[Rendering], directory: Path | None,
                  depths: list[torch.Tensor] | None = None) -> Iterator[np.ndarray]:
    """uint8 frames of ``renderings``, each also saved as a PNG in ``directory`` when given; with
    ``depths``, each view's depth map [H, W] (on the CPU) is appended to it."""
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    for index, rendering in enumerate(renderings):
        frame = frame_to_uint8(rendering.image)
        if directory is not None:
            save_frame(frame_path(directory, index), frame)
        if depths is not None:
            depths.append(rendering.depth.cpu())
        yield frame


def write_masks_and_depth(out: Path, depth: torch.Tensor, fps: float, frames: bool) -> None:
    """masks.mp4, depth.mp4 and depth.npz in ``out`` from the rendered depth [N, H, W] (inf exactly
    in :attr:`Rendering.holes`); with ``frames`` also the masks as masks/frame_NNNNN.png (white = hole)."""
    coverage = torch.isfinite(depth)
    masks = (~coverage)[..., None].expand(-1, -1, -1, 3).float()
    write_video(out / "masks.mp4", masks, fps)
    if frames:
        write_frames(out / "masks", masks)
    write_video(out / "depth.mp4", depth_image(depth, coverage)[..., None].expand(-1, -1, -1, 3), fps)
    with atomic_path(out / "depth.npz", suffix=".npz") as temporary:
        np.savez_compressed(temporary, depth=depth.numpy())


def run(args: argparse.Namespace) -> int:
    source = scene_path(args.scene_dir)
    scene = load_scene(source)
    scene.check_points(source)
    cameras = trajectory_cameras(args, scene, source)
    width, height = args.width or cameras.width, args.height or cameras.height
    if args.point_size < 1 or width < 1 or height < 1 or not args.fps > 0:
        raise ValueError("--point-size, --width, --height and --fps must be positive.")
    if not all(0.0 <= value <= 1.0 for value in args.background):
        raise ValueError(f"--background takes three values in [0, 1], got {list(args.background)}.")
    K = fit_intrinsics(torch.from_numpy(cameras.K), (cameras.height, cameras.width), (height, width))
    clouds = ScenePointClouds(scene, point_filter_from_args(args), args.max_points, args.downsample)
    if args.time_frame is not None:
        if not 0 <= args.time_frame < scene.num_frames:
            raise ValueError(f"--time-frame must be in 0..{scene.num_frames - 1}, got {args.time_frame}.")
        clouds = [clouds[args.time_frame]]
    out = check_output_folder(args.out or source.parent / "render", output_names(args), overwrite=args.overwrite)
    renderings = render_views(clouds, K, torch.from_numpy(cameras.cams2world), height, width, args.point_size,
                              tuple(args.background), args.device)
    depths = [] if args.masks else None
    video = write_video(out / "render.mp4",
                        _saved_frames(renderings, None if args.no_frames else out / "frames", depths), args.fps)
    if depths is not None:
        write_masks_and_depth(out, torch.stack(depths), args.fps, not args.no_frames)
    logger.info("Rendered %d views (%s) to %s.", cameras.num_frames, args.trajectory, video)
    return 0
