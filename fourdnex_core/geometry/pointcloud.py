"""Coloured point clouds from a scene's frames: building, filtering and downsampling.

A frame of the scene is a pixel-aligned point map (``xyz: [H, W, 3]``) with its colours
(``rgb: [H, W, 3]``). When post-optimization has run, the points are rebuilt from its
depth, intrinsics and cameras instead (``depth: [H, W]``, ``K: [3, 3]``, ``cam2world: [4, 4]``,
OpenCV axes: x right, y down, z forward; pixel centres at integer coordinates).

Filters work on the pixel grid, so they stay linear in the number of pixels:

* invalid points: non-finite coordinates, ``False`` in the scene's mask, or a confidence of 0,
  NaN or below ``min_confidence`` (where the scene has a confidence map);
* depth edges: the "flying pixels" between a foreground object and the background, where
  inverse depth jumps by more than ``depth_edge_rtol`` (needs depth: post-optimization);
* statistical outliers: the mean distance from a point to its ``outlier_neighbors`` nearest
  points among the pixels within ``outlier_radius``, relative to that of the points around it,
  above the frame's median + ``outlier_std_ratio`` x (robust) std, and at least twice as large.

Everything here is per frame, so a scene of any length is processed in bounded memory.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Literal, overload

import numpy as np
import torch

from fourdnex_core.geometry.cameras import backproject
from fourdnex_core.geometry.confidence import check_min_confidence, mask_keeps
from fourdnex_core.scene_file import Scene

logger = logging.getLogger(__name__)

DownsampleMethod = Literal["stride", "voxel"]


@dataclasses.dataclass
class PointCloud:
    """One frame's coloured points.

    positions: [N, 3] float32, scene coordinates (OpenCV axes).
    colors: [N, 3] uint8 RGB.
    """

    positions: np.ndarray
    colors: np.ndarray

    def __post_init__(self) -> None:
        positions = np.asarray(self.positions)
        colors = np.asarray(self.colors)
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise ValueError(f"PointCloud.positions must be [N, 3], got {positions.shape}.")
        if colors.shape != positions.shape:
            raise ValueError(
                f"PointCloud.colors {colors.shape} must match positions {positions.shape}: one RGB per point."
            )
        if colors.dtype != np.uint8:
            raise ValueError(f"PointCloud.colors must be uint8 RGB, got {colors.dtype}; convert with "
                             "np.clip(c * 255, 0, 255).astype(np.uint8) for colours in [0, 1].")
        self.positions = np.ascontiguousarray(positions, dtype=np.float32)
        self.colors = np.ascontiguousarray(colors)

    def __len__(self) -> int:
        return self.positions.shape[0]

    def check_finite(self) -> None:
        """Raise before a writer stores NaN or infinite positions (every exporter calls it)."""
        if not np.isfinite(self.positions).all():
            raise ValueError("PointCloud has non-finite positions; filter them (pointcloud.valid_mask) before export.")

    def select(self, keep: np.ndarray) -> PointCloud:
        """The points picked by ``keep`` (a boolean mask [N] or an index array)."""
        return PointCloud(self.positions[keep], self.colors[keep])


@dataclasses.dataclass(frozen=True)
class PointFilter:
    """Which points to drop when a frame becomes a point cloud; ``None`` turns a filter off.

    use_mask: apply the scene's validity mask and confidence map. min_confidence: also drop
    points whose confidence is below this (only where the scene has a confidence map).
    """

    use_mask: bool = True
    min_confidence: float = 0.0
    depth_edge_rtol: float | None = 0.1
    outlier_std_ratio: float | None = 2.0
    outlier_neighbors: int = 8
    outlier_radius: int = 2


def _check_map(name: str, array: np.ndarray, channels: int | None) -> None:
    expected_ndim = 2 if channels is None else 3
    if array.ndim != expected_ndim or (channels is not None and array.shape[-1] != channels):
        shape = "[H, W]" if channels is None else f"[H, W, {channels}]"
        raise ValueError(f"{name} must be {shape} (one frame), got {array.shape}; index the frame first.")


def camera_depth(xyz: np.ndarray, cam2world: np.ndarray) -> np.ndarray:
    """Depth along the camera z axis of scene points. xyz: [..., 3]; cam2world: [4, 4] -> [...]."""
    rotation, center = cam2world[:3, :3], cam2world[:3, 3]
    return ((xyz - center) @ rotation[:, 2]).astype(np.float32)


def frame_depth(scene: Scene, index: int) -> np.ndarray | None:
    """Depth map [H, W] of frame ``index``: the scene's own, else from xyz and cameras, else None."""
    if scene.depth is not None:
        return scene.depth[index]
    if scene.cams2world is not None:
        return camera_depth(scene.xyz[index], scene.cams2world[index])
    return None


def frame_points(scene: Scene, index: int) -> np.ndarray:
    """Scene points of frame ``index``: [H, W, 3], re-projected from depth when post-opt has run."""
    if scene.depth is not None and scene.K is not None and scene.cams2world is not None:
        depth, K, pose = (torch.as_tensor(np.asarray(array), dtype=torch.float32)
                          for array in (scene.depth[index], scene.frame_K(index), scene.cams2world[index]))
        return backproject(depth, K, pose).numpy()
    return scene.xyz[index]


def confidence_within_mask(confidence: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Confidence (any shape, e.g. [F, H, W] or [H, W]) as float32, set to 0 where the bool
    validity ``mask`` of the same shape is False (no mask: unchanged)."""
    confidence = np.asarray(confidence, dtype=np.float32)
    return confidence if mask is None else np.where(mask, confidence, 0.0).astype(np.float32)


def frame_mask(scene: Scene, index: int) -> np.ndarray | None:
    """Frame ``index``'s mask [H, W]: its confidence (0 outside the validity mask) when the scene
    has a confidence map, else its bool validity mask, else None. The validity mask is the
    scene's ``mask`` and, after post-optimization, its ``valid`` (:meth:`Scene.point_mask`)."""
    points = scene.point_mask()
    mask = points[index] if points is not None else None
    if scene.confidence is None:
        return mask
    return confidence_within_mask(scene.confidence[index], mask)


def valid_mask(xyz: np.ndarray, mask: np.ndarray | None = None, depth: np.ndarray | None = None,
               min_confidence: float = 0.0) -> np.ndarray:
    """Points worth keeping: finite, kept by ``mask`` and (when given) with positive depth.

    xyz: [H, W, 3]; depth: [H, W]; mask: [H, W] bool validity or float confidence, read by the
    one rule of :func:`fourdnex_core.geometry.confidence.mask_keeps` (a confidence is kept above
    0 and at least ``min_confidence``; a bool mask has no confidence, so the threshold does not
    apply to it; negative or infinite confidence is an error). Returns [H, W] bool.
    """
    _check_map("xyz", xyz, 3)
    check_min_confidence(min_confidence)
    keep = np.isfinite(xyz).all(axis=-1)
    if mask is not None:
        keep &= mask_keeps(np.asarray(mask), min_confidence)
    if depth is not None:
        keep &= np.isfinite(depth) & (depth > 0)
    return keep


def depth_edge_mask(depth: np.ndarray, rtol: float = 0.1) -> np.ndarray:
    """Pixels next to a depth discontinuity. depth: [H, W] -> [H, W] bool (True = edge).

    On any plane, however slanted, inverse depth is affine in the pixel coordinates, so its
    second difference along rows and columns is zero. A pixel is an edge when that second
    difference (over the pixel and its two neighbours along either axis) exceeds ``rtol`` times
    its own inverse depth: both pixels beside a jump are caught, grazing floors are not.
    Pixels with a non-finite or non-positive neighbour along an axis are not judged along it.
    """
    _check_map("depth", depth, None)
    if rtol <= 0:
        raise ValueError(f"depth_edge_rtol must be positive, got {rtol}; pass None to keep depth edges.")
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(np.isfinite(depth) & (depth > 0), 1.0 / depth, np.nan).astype(np.float32)
        padded = np.pad(inverse, 1, constant_values=np.nan)
        center = padded[1:-1, 1:-1]
        edges = np.abs(padded[:-2, 1:-1] - 2 * center + padded[2:, 1:-1]) > rtol * center
        edges |= np.abs(padded[1:-1, :-2] - 2 * center + padded[1:-1, 2:]) > rtol * center
    return edges


def _neighbours(values: np.ndarray, radius: int) -> Iterator[np.ndarray]:
    """values [H, W, ...] shifted to each of the (2r+1)^2 - 1 offsets around every pixel (views).

    The image border is mirrored, so border pixels have as many neighbours as interior ones.
    """
    height, width = values.shape[:2]
    pad = ((radius, radius), (radius, radius)) + ((0, 0),) * (values.ndim - 2)
    padded = np.pad(values, pad, mode="reflect")
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            if (dy, dx) != (radius, radius):
                yield padded[dy:dy + height, dx:dx + width]


def neighbour_spacing(xyz: np.ndarray, valid: np.ndarray, num_neighbors: int = 8, radius: int = 2) -> np.ndarray:
    """Mean distance from each point to its ``num_neighbors`` nearest valid points among the
    pixels within ``radius``. xyz: [H, W, 3]; valid: [H, W] -> [H, W] (NaN: no valid neighbour)."""
    _check_map("xyz", xyz, 3)
    window = (2 * radius + 1) ** 2 - 1
    if not 1 <= num_neighbors <= window:
        raise ValueError(f"outlier_neighbors must be in 1..{window} for outlier_radius {radius}, got {num_neighbors}.")
    points = np.where(valid[..., None], xyz, np.nan).astype(np.float32)
    distances = np.empty((window, *valid.shape), dtype=np.float32)
    for slot, shifted in enumerate(_neighbours(points, radius)):
        offset = shifted - points
        distances[slot] = np.sqrt(np.einsum("hwc,hwc->hw", offset, offset))
    distances[np.isnan(distances)] = np.inf
    nearest = np.partition(distances, num_neighbors - 1, axis=0)[:num_neighbors]
    finite = np.isfinite(nearest)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite, nearest, 0.0).sum(axis=0) / finite.sum(axis=0)


def _finite_median(values: np.ndarray) -> np.ndarray:
    """Lower median over axis 0 of the finite entries of values [K, ...]; NaN where none is finite."""
    ordered = np.sort(np.where(np.isfinite(values), values, np.inf), axis=0)
    count = np.isfinite(ordered).sum(axis=0)
    middle = np.take_along_axis(ordered, np.maximum(count - 1, 0)[None] // 2, axis=0)[0]
    return np.where(count > 0, middle, np.nan)


def statistical_outlier_mask(xyz: np.ndarray, valid: np.ndarray, num_neighbors: int = 8, radius: int = 2,
                             std_ratio: float = 2.0, min_ratio: float = 2.0) -> np.ndarray:
    """Points far from their neighbours. xyz: [H, W, 3]; valid: [H, W] -> [H, W] bool (True = outlier).

    Each valid point's :func:`neighbour_spacing` is divided by the (lower) median spacing of the
    points around it, a ratio near 1 on any surface whatever its distance or slant, and large for a point
    thrown off the surface. Outliers have a ratio above both median + ``std_ratio`` x std of the
    frame's ratios and ``min_ratio`` (so a clean frame, whose ratios barely spread, loses
    nothing), or no valid neighbour. The std is estimated robustly (1.4826 x the median absolute
    deviation) so that the outliers themselves do not raise the bar. The test is scale-free: raw
    and metric point maps behave alike.
    """
    spacing = neighbour_spacing(xyz, valid, num_neighbors, radius)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = spacing / _finite_median(np.stack(list(_neighbours(spacing, radius))))
    scored = valid & np.isfinite(ratio)
    if not scored.any():
        return valid.copy()
    values = ratio[scored]
    center = np.median(values)
    robust_std = 1.4826 * np.median(np.abs(values - center))
    threshold = max(center + std_ratio * robust_std, min_ratio)
    return valid & ~(scored & (ratio <= threshold))


def stride_downsample(cloud: PointCloud, max_points: int) -> PointCloud:
    """At most ``max_points`` points, evenly spaced in the cloud's (row-major pixel) order."""
    if len(cloud) <= max_points:
        return cloud
    return cloud.select(np.linspace(0, len(cloud) - 1, max_points).round().astype(np.int64))


def voxel_downsample(cloud: PointCloud, voxel_size: float) -> PointCloud:
    """One point per occupied cube of side ``voxel_size``: the mean position and colour of its points."""
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}.")
    if len(cloud) == 0:
        return cloud
    inverse, count = _voxel_labels(cloud.positions, voxel_size)
    sizes = np.bincount(inverse, minlength=count).astype(np.float64)
    positions = np.stack([np.bincount(inverse, cloud.positions[:, axis], count) for axis in range(3)], axis=1)
    colors = np.stack([np.bincount(inverse, cloud.colors[:, axis], count) for axis in range(3)], axis=1)
    return PointCloud((positions / sizes[:, None]).astype(np.float32),
                      np.clip(np.rint(colors / sizes[:, None]), 0, 255).astype(np.uint8))


def _voxel_labels(positions: np.ndarray, voxel_size: float) -> tuple[np.ndarray, int]:
    """Voxel label [N] of each point and the number of occupied voxels."""
    cells = np.floor((positions - positions.min(axis=0)) / voxel_size).astype(np.int64)
    extent = cells.max(axis=0) + 1
    if float(np.prod(extent.astype(np.float64))) >= 2.0 ** 62:
        raise ValueError(f"voxel_size {voxel_size} is too small for a cloud this large; use a larger voxel size.")
    keys = cells[:, 0] + extent[0] * (cells[:, 1] + extent[1] * cells[:, 2])
    _, inverse = np.unique(keys, return_inverse=True)
    return inverse, int(inverse.max()) + 1


def voxel_size_for_budget(positions: np.ndarray, max_points: int, iterations: int = 24) -> float:
    """Smallest voxel size (to ~1 %) that leaves at most ``max_points`` voxels. positions: [N, 3]."""
    extent = float((positions.max(axis=0) - positions.min(axis=0)).max())
    high = max(extent, 1e-12) * 1.01
    low = high * 1e-6
    for _ in range(iterations):
        if high / low < 1.01:
            break
        middle = math.sqrt(low * high)
        if _voxel_labels(positions, middle)[1] > max_points:
            low = middle
        else:
            high = middle
    return high


def limit_points(cloud: PointCloud, max_points: int | None, method: DownsampleMethod = "stride") -> PointCloud:
    """Downsample ``cloud`` to a point budget (None or 0: keep every point)."""
    if max_points is not None and max_points < 0:
        raise ValueError(f"max_points must be positive (or 0 for no limit), got {max_points}.")
    if not max_points or len(cloud) <= max_points:
        return cloud
    if method == "stride":
        return stride_downsample(cloud, max_points)
    if method == "voxel":
        reduced = voxel_downsample(cloud, voxel_size_for_budget(cloud.positions, max_points))
        return stride_downsample(reduced, max_points)
    raise ValueError(f"Unknown downsample method {method!r}; use 'stride' or 'voxel'.")


def frame_point_cloud(rgb: np.ndarray, xyz: np.ndarray, mask: np.ndarray | None = None,
                      depth: np.ndarray | None = None, point_filter: PointFilter | None = None) -> PointCloud:
    """Filtered coloured points of one frame.

    rgb: [H, W, 3] uint8; xyz: [H, W, 3] scene points; mask: [H, W] bool (valid pixels) or
    float confidence (see :func:`valid_mask`); depth: [H, W] camera depth, needed by the
    depth-edge filter (without it depth edges are kept). Returns a PointCloud in row-major pixel
    order.
    """
    _check_map("rgb", rgb, 3)
    _check_map("xyz", xyz, 3)
    if rgb.shape != xyz.shape:
        raise ValueError(f"rgb {rgb.shape} and xyz {xyz.shape} must have the same shape.")
    point_filter = point_filter or PointFilter()
    keep = valid_mask(xyz, mask if point_filter.use_mask else None, depth, point_filter.min_confidence)
    if point_filter.depth_edge_rtol is not None and depth is not None:
        keep &= ~depth_edge_mask(depth, point_filter.depth_edge_rtol)
    if point_filter.outlier_std_ratio is not None:
        keep &= ~statistical_outlier_mask(xyz, keep, point_filter.outlier_neighbors,
                                          point_filter.outlier_radius, point_filter.outlier_std_ratio)
    return PointCloud(xyz[keep], np.asarray(rgb, dtype=np.uint8)[keep])


class ScenePointClouds(Sequence[PointCloud]):
    """The filtered, budgeted PointCloud of each frame of ``scene``, built when indexed.

    Only the frame asked for is built, so iterating over a long scene holds one frame at a time.
    """

    def __init__(self, scene: Scene, point_filter: PointFilter | None = None, max_points: int | None = None,
                 method: DownsampleMethod = "stride") -> None:
        self.scene = scene
        self.point_filter = point_filter or PointFilter()
        self.max_points = max_points
        self.method = method
        if self.point_filter.depth_edge_rtol is not None and scene.depth is None and scene.cams2world is None:
            logger.info("Scene has no cameras: depth edges are kept (run post-optimization to filter them).")
        if self.point_filter.min_confidence > 0 and scene.confidence is None:
            logger.info("Scene has no confidence map: min_confidence=%g is not applied.",
                        self.point_filter.min_confidence)

    def __len__(self) -> int:
        return self.scene.num_frames

    @overload
    def __getitem__(self, index: int) -> PointCloud: ...

    @overload
    def __getitem__(self, index: slice) -> list[PointCloud]: ...

    def __getitem__(self, index: int | slice) -> PointCloud | list[PointCloud]:
        if isinstance(index, slice):
            return [self[item] for item in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"Frame {index} is out of range for a scene of {len(self)} frames.")
        index %= len(self)
        scene = self.scene
        cloud = frame_point_cloud(scene.rgb[index], frame_points(scene, index), frame_mask(scene, index),
                                  frame_depth(scene, index), self.point_filter)
        return limit_points(cloud, self.max_points, self.method)

