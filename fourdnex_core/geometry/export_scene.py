"""Every export of one scene, in one pass over its frames: what ``fourdnex export`` and the save
node of ``nodes/`` both call.

Each frame's point cloud is built once and handed to every per-frame format (PLY, GLB, splats,
Rerun; the COLMAP model keeps the clouds of its frames); the camera formats follow. Where each
format goes is an :class:`ExportPaths` (None leaves a format out). Every file is written
atomically by its writer, and every folder of frames (PLY, splats, images, the COLMAP model) is
filled under a hidden name and put in place whole when its part has ended: an earlier folder is
replaced whole, a failed export leaves none. A camera dataset folder holds ``images/`` (the RGB
frames), Nerfstudio's ``transforms.json`` and COLMAP's ``sparse/0/``, the layout ``ns-train`` and
``colmap`` expect.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from fourdnex_core.atomic_write import atomic_folder
from fourdnex_core.geometry import export_rerun, export_splats
from fourdnex_core.geometry.export_cameras import CameraSet, write_cameras_json, write_transforms_json
from fourdnex_core.geometry.export_colmap import colmap_points, point_frames, write_colmap
from fourdnex_core.geometry.export_glb import GlbPointsWriter
from fourdnex_core.geometry.export_ply import write_ply
from fourdnex_core.geometry.pointcloud import PointCloud, frame_depth
from fourdnex_core.scene_file import Scene
from fourdnex_core.video_io import write_frames

COLMAP_MODEL = "sparse/0"
IMAGES = "images"


@dataclasses.dataclass(frozen=True)
class ExportPaths:
    """Where each format goes; None (or False) leaves it out.

    ply, splats: folders of ``frame_NNNNN.ply``; glb, rerun, cameras_json: files; dataset: the
    camera dataset folder, holding ``transforms.json`` when ``nerfstudio`` and ``sparse/0/`` when
    ``colmap`` ("binary" or "text"), and ``images/`` for either.
    """

    ply: Path | None = None
    glb: Path | None = None
    splats: Path | None = None
    rerun: Path | None = None
    cameras_json: Path | None = None
    dataset: Path | None = None
    nerfstudio: bool = False
    colmap: str | None = None

    def __post_init__(self) -> None:
        if (self.nerfstudio or self.colmap) and self.dataset is None:
            raise ValueError("ExportPaths: Nerfstudio and COLMAP exports need a dataset folder.")
        if self.colmap not in (None, "binary", "text"):
            raise ValueError(f"ExportPaths.colmap must be 'binary', 'text' or None, got {self.colmap!r}.")

    @property
    def needs_cameras(self) -> bool:
        return bool(self.cameras_json or self.nerfstudio or self.colmap)

    @property
    def per_frame(self) -> bool:
        return any(path is not None for path in (self.ply, self.glb, self.splats, self.rerun)) or bool(self.colmap)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """fps: GLB animation rate (None: every frame shown at once); colmap_stride: COLMAP points3D from
    frame 0 (0) or every k-th frame; colmap_max_points: their budget in all (None: every point);
    splat_sh_degree: 0 or 3; ply_file_path: Nerfstudio's initial points, relative to the dataset."""

    fps: float | None = 24.0
    colmap_stride: int = 0
    colmap_max_points: int | None = None
    splat_sh_degree: int = 0
    ply_file_path: str | None = None


def check_export(paths: ExportPaths, options: ExportOptions, cameras: CameraSet | None, num_frames: int) -> None:
    """Every problem the arguments alone show, before any work: cameras needed and missing, optional
    packages missing, bad options."""
    point_frames(num_frames, options.colmap_stride)
    export_splats.splat_properties(options.splat_sh_degree)
    if paths.needs_cameras and cameras is None:
        raise ValueError("The scene has no cameras (K, cams2world), which cameras.json, Nerfstudio and COLMAP "
                         "exports need; run post-optimization on it first (it recovers them).")
    if paths.splats is not None:
        export_splats.check_available()
    if paths.rerun is not None:
        export_rerun.check_available()


def export_scene(scene: Scene, clouds: Sequence[PointCloud], paths: ExportPaths, options: ExportOptions,
                 cameras: CameraSet | None = None, frames: Callable[[Iterable], Iterable] = iter) -> list[Path]:
    """Write ``scene``'s exports to ``paths``; returns the files and folders written, in order.

    clouds: the scene's F point clouds (built when indexed, e.g. ScenePointClouds); cameras: the
    scene's cameras (needed by the camera formats); frames: wraps the pass over the frames
    (a progress bar, an interruption check).
    """
    check_export(paths, options, cameras, scene.num_frames)
    colmap_frames = point_frames(scene.num_frames, options.colmap_stride) if paths.colmap else []
    kept: dict[int, PointCloud] = {}
    written: list[Path] = []
    with contextlib.ExitStack() as stack:  # each file and folder appears whole, when the pass has ended
        glb = stack.enter_context(GlbPointsWriter(paths.glb, options.fps)) if paths.glb else None
        rerun = stack.enter_context(export_rerun.RerunWriter(paths.rerun, cameras)) if paths.rerun else None
        ply = stack.enter_context(atomic_folder(paths.ply)) if paths.ply is not None else None
        splats = stack.enter_context(atomic_folder(paths.splats)) if paths.splats is not None else None
        if paths.per_frame:
            for index in frames(range(scene.num_frames)):
                cloud = clouds[index]
                if ply is not None:
                    write_ply(ply / f"frame_{index:05d}.ply", cloud)
                if glb is not None:
                    glb.add_frame(cloud)
                if splats is not None:
                    export_splats.write_splats(splats / f"frame_{index:05d}.ply", cloud,
                                               sh_degree=options.splat_sh_degree)
                if rerun is not None:
                    rerun.add_frame(index, cloud, scene.rgb[index], frame_depth(scene, index))
                if index in colmap_frames:
                    kept[index] = cloud
    written += [path for path in (paths.ply, paths.glb, paths.splats, paths.rerun) if path is not None]
    if paths.cameras_json is not None:
        written.append(write_cameras_json(paths.cameras_json, cameras))
    if paths.nerfstudio or paths.colmap:
        with contextlib.ExitStack() as stack:  # the images and the COLMAP model appear together
            images = stack.enter_context(atomic_folder(paths.dataset / IMAGES))
            names = [path.name for path in write_frames(images, scene.rgb)]
            if paths.colmap:
                points = colmap_points(kept, colmap_frames, options.colmap_max_points)
                write_colmap(stack.enter_context(atomic_folder(paths.dataset / COLMAP_MODEL)), cameras, names,
                             points, binary=paths.colmap == "binary")
        written += [paths.dataset / IMAGES] + ([paths.dataset / COLMAP_MODEL] if paths.colmap else [])
        if paths.nerfstudio:  # after the images it names are in place
            written.append(write_transforms_json(paths.dataset / "transforms.json", cameras,
                                                 [f"{IMAGES}/{name}" for name in names],
                                                 ply_file_path=options.ply_file_path))
    return written
