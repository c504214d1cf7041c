"""A COLMAP sparse model of the scene: cameras, one registered image per frame, and points3D.

Written by our own small writer (COLMAP's text and binary model formats are documented, "Output
format" in COLMAP's manual; pycolmap, a 38 MB compiled package, reads them back in the tests but
is no dependency of the product). A COLMAP workspace as tools expect it::

    images/frame_00000.png ...     the RGB frames the model names (written by the caller)
    sparse/0/cameras.bin           (or .txt) PINHOLE: fx fy cx cy
    sparse/0/images.bin            one image per frame: world-to-camera qvec (w x y z), tvec, camera
    sparse/0/points3D.bin          positions, colours, and each point's track

* cameras: one PINHOLE camera when the frames share their intrinsics, else one per frame
  (camera id = image id). COLMAP puts the centre of pixel (u, v) at (u + 0.5, v + 0.5), the
  scene at (u, v), so cx and cy are the scene's + 0.5
  (:func:`~fourdnex_core.geometry.export_cameras.corner_origin_K`).
* images: id ``f + 1`` for frame ``f``; the pose is the inverse of the scene's OpenCV
  ``cam2world`` (COLMAP's cameras are OpenCV's: x right, y down, z forward), R as a unit
  quaternion (kornia's conversion, w >= 0).
* points3D: the points of the chosen frames (:func:`colmap_points`), ids from 1. Each point has
  a track of one observation: the image of the frame it came from, at its projection there (so
  its reprojection error, the ERROR column, is 0), and that image lists it in its POINTS2D.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from kornia.geometry.conversions import rotation_matrix_to_quaternion

from fourdnex_core.atomic_write import atomic_path
from fourdnex_core.geometry.export_cameras import CameraSet, corner_origin_K
from fourdnex_core.geometry.pointcloud import PointCloud

PINHOLE_MODEL_ID = 1
FORMATS = ("text", "binary")
_POINT_RECORD = np.dtype([("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("error", "<f8"),
                          ("track_length", "<u8"), ("image_id", "<u4"), ("point2d_index", "<u4")])
_POINT2D_RECORD = np.dtype([("xy", "<f8", 2), ("point3d_id", "<u8")])


@dataclasses.dataclass
class ColmapPoints:
    """Points for the model. positions: [N, 3] scene units; colors: [N, 3] uint8; frames: [N] int,
    the frame each point came from (its observation is in that frame's image)."""

    positions: np.ndarray
    colors: np.ndarray
    frames: np.ndarray

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.colors = np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3)
        self.frames = np.asarray(self.frames, dtype=np.int64).reshape(-1)
        if not len(self.positions) == len(self.colors) == len(self.frames):
            raise ValueError(f"ColmapPoints: {len(self.positions)} positions, {len(self.colors)} colours and "
                             f"{len(self.frames)} frames must match.")


def point_frames(num_frames: int, stride: int) -> list[int]:
    """The frames whose points go into the model: frame 0 (``stride`` 0) or every ``stride``-th."""
    if stride < 0:
        raise ValueError(f"The COLMAP frame stride must be >= 0 (0: frame 0 only, 1: every frame), got {stride}.")
    return [0] if stride == 0 else list(range(0, num_frames, stride))


def colmap_points(clouds: Sequence[PointCloud] | Mapping[int, PointCloud], frames: Sequence[int],
                  max_points: int | None) -> ColmapPoints:
    """The points of ``clouds[f]`` (a sequence, or a mapping holding at least ``frames``) for ``f`` in ``frames``, at most ``max_points`` in all (None or 0:
    every point), kept evenly spaced in frame and pixel order."""
    chosen = [(index, clouds[index]) for index in frames]
    positions = np.concatenate([cloud.positions for _, cloud in chosen]) if chosen else np.zeros((0, 3))
    colors = np.concatenate([cloud.colors for _, cloud in chosen]) if chosen else np.zeros((0, 3), np.uint8)
    owner = np.concatenate([np.full(len(cloud), index) for index, cloud in chosen]) if chosen else np.zeros(0)
    if max_points and len(positions) > max_points:
        keep = np.linspace(0, len(positions) - 1, max_points).round().astype(np.int64)
        positions, colors, owner = positions[keep], colors[keep], owner[keep]
    return ColmapPoints(positions, colors, owner)


def _camera_ids(cameras: CameraSet) -> tuple[list[np.ndarray], np.ndarray]:
    """The distinct intrinsics (corner-origin K [3, 3] each) and the camera id [F] of each frame."""
    if cameras.per_frame and not np.allclose(cameras.K, cameras.K[:1], rtol=0, atol=1e-9):
        return list(corner_origin_K(cameras.K)), np.arange(1, cameras.num_frames + 1)
    return [corner_origin_K(cameras.frame_K(0))], np.ones(cameras.num_frames, np.int64)


def world_to_camera(cameras: CameraSet) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP poses of every frame: qvec [F, 4] (w, x, y, z; w >= 0) and tvec [F, 3]."""
    world2cam = np.linalg.inv(cameras.cams2world)
    rotation = torch.from_numpy(np.ascontiguousarray(world2cam[:, :3, :3]))
    qvec = rotation_matrix_to_quaternion(rotation, eps=1e-12).numpy()
    qvec /= np.linalg.norm(qvec, axis=1, keepdims=True)
    qvec *= np.where(qvec[:, :1] < 0, -1.0, 1.0)
    return qvec, world2cam[:, :3, 3]


def _observations(cameras: CameraSet, points: ColmapPoints, camera_of_frame: np.ndarray,
                  intrinsics: list[np.ndarray]) -> np.ndarray:
    """Each point's projection [N, 2] (COLMAP pixel coordinates) into the image of its frame."""
    pixels = np.zeros((len(points.positions), 2))
    world2cam = np.linalg.inv(cameras.cams2world)
    for frame in np.unique(points.frames):
        rows = points.frames == frame
        K = intrinsics[camera_of_frame[frame] - 1]
        local = points.positions[rows] @ world2cam[frame, :3, :3].T + world2cam[frame, :3, 3]
        projected = local @ K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            pixels[rows] = projected[:, :2] / projected[:, 2:3]
    return pixels


def write_colmap(folder: str | Path, cameras: CameraSet, image_names: Sequence[str], points: ColmapPoints,
                 binary: bool = True) -> list[Path]:
    """Write ``cameras.*``, ``images.*`` and ``points3D.*`` (``.bin`` or ``.txt``) into ``folder``.

    image_names: one per frame, relative to the workspace's ``images/`` folder. Returns the paths.
    """
    if len(image_names) != cameras.num_frames:
        raise ValueError(f"Got {len(image_names)} image names for {cameras.num_frames} cameras; give one per frame.")
    if len(points.frames) and not (0 <= points.frames.min() and points.frames.max() < cameras.num_frames):
        raise ValueError(f"ColmapPoints come from frames outside 0..{cameras.num_frames - 1}.")
    if not np.isfinite(points.positions).all():
        raise ValueError("ColmapPoints has non-finite positions; filter them before export.")
    folder = Path(folder)
    intrinsics, camera_of_frame = _camera_ids(cameras)
    qvec, tvec = world_to_camera(cameras)
    pixels = _observations(cameras, points, camera_of_frame, intrinsics)
    # per image, its points in order: point2D index = rank of the point among its frame's points
    order = np.argsort(points.frames, kind="stable")
    point_index = np.empty(len(order), np.int64)
    starts = np.searchsorted(points.frames[order], np.arange(cameras.num_frames + 1))
    for frame in range(cameras.num_frames):
        point_index[order[starts[frame]:starts[frame + 1]]] = np.arange(starts[frame + 1] - starts[frame])
    model = _Model(cameras, intrinsics, camera_of_frame, qvec, tvec, list(image_names), points, pixels, order,
                   starts, point_index)
    writers = (model.write_binary if binary else model.write_text)
    return writers(folder)


@dataclasses.dataclass
class _Model:
    cameras: CameraSet
    intrinsics: list[np.ndarray]
    camera_of_frame: np.ndarray
    qvec: np.ndarray
    tvec: np.ndarray
    names: list[str]
    points: ColmapPoints
    pixels: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    point_index: np.ndarray

    def _params(self, K: np.ndarray) -> list[float]:
        return [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]

    def _image_points(self, frame: int) -> np.ndarray:
        """Indices [M] into the points of the observations in frame ``frame``'s image, in POINTS2D order."""
        return self.order[self.starts[frame]:self.starts[frame + 1]]

    def write_binary(self, folder: Path) -> list[Path]:
        width, height = self.cameras.width, self.cameras.height
        cameras = struct.pack("<Q", len(self.intrinsics)) + b"".join(
            struct.pack("<IiQQ4d", index + 1, PINHOLE_MODEL_ID, width, height, *self._params(K))
            for index, K in enumerate(self.intrinsics))
        images = [struct.pack("<Q", self.cameras.num_frames)]
        for frame, name in enumerate(self.names):
            observed = self._image_points(frame)
            records = np.empty(len(observed), _POINT2D_RECORD)
            records["xy"] = self.pixels[observed]
            records["point3d_id"] = observed + 1
            images.append(struct.pack("<I4d3dI", frame + 1, *self.qvec[frame], *self.tvec[frame],
                                      self.camera_of_frame[frame]) + name.encode("utf-8") + b"\0"
                          + struct.pack("<Q", len(observed)) + records.tobytes())
        records = np.empty(len(self.points.positions), _POINT_RECORD)
        records["id"] = np.arange(1, len(records) + 1)
        records["xyz"] = self.points.positions
        records["rgb"] = self.points.colors
        records["error"] = 0.0
        records["track_length"] = 1
        records["image_id"] = self.points.frames + 1
        records["point2d_index"] = self.point_index
        points = struct.pack("<Q", len(records)) + records.tobytes()
        return [_write_bytes(folder / "cameras.bin", cameras), _write_bytes(folder / "images.bin", b"".join(images)),
                _write_bytes(folder / "points3D.bin", points)]

    def write_text(self, folder: Path) -> list[Path]:
        width, height = self.cameras.width, self.cameras.height
        cameras = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
                   f"# Number of cameras: {len(self.intrinsics)}"]
        cameras += [f"{index + 1} PINHOLE {width} {height} " + " ".join(f"{value:.17g}" for value in self._params(K))
                    for index, K in enumerate(self.intrinsics)]
        count = len(self.points.positions)
        images = ["# Image list with two lines of data per image:",
                  "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
                  "#   POINTS2D[] as (X, Y, POINT3D_ID)",
                  f"# Number of images: {self.cameras.num_frames}, mean observations per image: "
                  f"{count / self.cameras.num_frames:.6g}"]
        for frame, name in enumerate(self.names):
            pose = " ".join(f"{value:.17g}" for value in (*self.qvec[frame], *self.tvec[frame]))
            images.append(f"{frame + 1} {pose} {self.camera_of_frame[frame]} {name}")
            observed = self._image_points(frame)
            images.append(" ".join(f"{x:.17g} {y:.17g} {index + 1}"
                                   for (x, y), index in zip(self.pixels[observed].tolist(), observed.tolist())))
        header = ["# 3D point list with one line of data per point:",
                  "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
                  f"# Number of points: {count}, mean track length: {1 if count else 0}"]
        rows = zip(self.points.positions.tolist(), self.points.colors.tolist(), (self.points.frames + 1).tolist(),
                   self.point_index.tolist())
        points = header + [f"{index} {x:.17g} {y:.17g} {z:.17g} {r} {g} {b} 0 {image} {slot}"
                           for index, ((x, y, z), (r, g, b), image, slot) in enumerate(rows, start=1)]
        return [_write_bytes(folder / name, ("\n".join(lines) + "\n").encode("utf-8"))
                for name, lines in (("cameras.txt", cameras), ("images.txt", images), ("points3D.txt", points))]


def _write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return path
