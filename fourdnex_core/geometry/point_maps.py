"""Point maps and recovered cameras as tensors, and the one way to and from a ``Scene``.

* :class:`PointMaps`: XYZ frames [F, H, W, 3] with their colours and validity (a decoded video,
  an XYZ init, a loaded scene's inputs, or post-optimization's registered points, which remember
  the point maps and cameras they came from);
* :class:`Cameras`: what post-optimization recovers (K, cams2world, depth, residuals, the points
  it used);
* the ``scene.npz`` content (see :mod:`fourdnex_core.scene_file` for what each array means):
  :func:`scene_from` builds it from tensors (the CLI's generate, the nodes, synthetic scenes),
  :func:`scene_with_cameras` sets its derived arrays (from :func:`cameras_from_postopt` for a
  post-optimization result: ``fourdnex postopt`` and the nodes), :func:`point_maps_from_scene`
  reads it back, :func:`camera_set` gives its cameras as a :class:`CameraSet` (exports, render);
* :func:`depth_image`: depth as a picture (inverse depth, near bright).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from fourdnex_core.geometry.export_cameras import CameraSet
from fourdnex_core.geometry.postopt import PostOptResult
from fourdnex_core.scene_file import Scene


_PERCENTILE_SAMPLE = 1_000_000  # depth_image reads its percentiles from about this many pixels


@dataclasses.dataclass
class PointMaps:
    """xyz: [F, H, W, 3] scene units; rgb: [F, H, W, 3] in [0, 1] or None; mask: [F, H, W] bool or None.

    registration: set on post-optimization's registered point maps (:func:`point_maps_from_postopt`):
    the point maps they were fitted to and the cameras recovered from them, so a scene built from
    them keeps the generated points in ``xyz`` (:func:`scene_from`).
    """

    xyz: torch.Tensor
    rgb: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    registration: Registration | None = None

    def __post_init__(self) -> None:
        if self.xyz.ndim != 4 or self.xyz.shape[-1] != 3:
            raise ValueError(f"Point maps must be [F, H, W, 3], got {tuple(self.xyz.shape)}.")
        if self.rgb is not None and self.rgb.shape != self.xyz.shape:
            raise ValueError(f"rgb {tuple(self.rgb.shape)} must match xyz {tuple(self.xyz.shape)}.")

    @property
    def num_frames(self) -> int:
        return self.xyz.shape[0]


@dataclasses.dataclass
class Cameras:
    """Recovered cameras: K [3, 3] (shared) or [F, 3, 3] (per frame), cams2world [F, 4, 4] (OpenCV),
    depth [F, H, W], residuals [F]; valid [F, H, W] bool, the points the fit used (None: not known)."""

    K: torch.Tensor
    cams2world: torch.Tensor
    depth: torch.Tensor
    residuals: torch.Tensor
    valid: torch.Tensor | None = None

    @property
    def height(self) -> int:
        return self.depth.shape[1]

    @property
    def width(self) -> int:
        return self.depth.shape[2]


@dataclasses.dataclass
class Registration:
    """What registered point maps come from: the point maps post-optimization was given and the
    cameras it recovered from them."""

    point_maps: PointMaps
    cameras: Cameras


def cameras_from_postopt(result: PostOptResult) -> Cameras:
    """The cameras of a post-optimization: its K ([3, 3] or [F, 3, 3]), poses, depth, residuals and
    the points it used."""
    return Cameras(K=result.scene_K, cams2world=result.cams2world, depth=result.depth, residuals=result.residuals,
                   valid=result.valid)


def point_maps_from_postopt(point_maps: PointMaps, result: PostOptResult) -> tuple[Cameras, PointMaps]:
    """Cameras and the registered point maps (``R K^-1 d [u, v, 1] + t``, masked by the points the
    fit used) of a post-optimization of ``point_maps``; the registered maps remember both."""
    cameras = cameras_from_postopt(result)
    registered = PointMaps(xyz=result.points, rgb=point_maps.rgb, mask=result.valid,
                           registration=Registration(point_maps, cameras))
    return cameras, registered


def rgb_to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """Colours [..., 3] in [0, 1] (clipped) -> uint8 0..255, rounded (the scene file's rgb)."""
    return (rgb.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def scene_from(point_maps: PointMaps, cameras: Cameras | None = None) -> Scene:
    """The :class:`Scene` (``scene.npz`` content) of point maps and, optionally, their cameras.

    ``xyz`` and ``mask`` are always the inputs: for registered point maps, the point maps they
    were fitted to, with their cameras unless ``cameras`` are given (the registered points are
    what the scene's depth and cameras give back, e.g. :func:`~fourdnex_core.geometry.pointcloud.frame_points`).
    """
    if point_maps.registration is not None:
        cameras = point_maps.registration.cameras if cameras is None else cameras
        point_maps = point_maps.registration.point_maps
    if point_maps.rgb is None:
        raise ValueError("These point maps carry no colours (an XYZ init?); use the point maps of a decoded video.")
    mask = point_maps.mask.cpu().numpy() if point_maps.mask is not None else None
    scene = Scene(rgb=rgb_to_uint8(point_maps.rgb), xyz=point_maps.xyz.detach().float().cpu().numpy(), mask=mask)
    return scene if cameras is None else scene_with_cameras(scene, cameras)


def scene_with_cameras(scene: Scene, cameras: Cameras) -> Scene:
    """``scene`` with its derived arrays (depth, K, cams2world, residuals, valid) replaced by
    ``cameras``' (from :func:`cameras_from_postopt` after a post-optimization); its inputs (rgb,
    xyz, mask, confidence) are kept as they are."""
    if tuple(cameras.depth.shape) != tuple(scene.xyz.shape[:3]):
        raise ValueError(f"The cameras belong to frames of {tuple(cameras.depth.shape)}, the point maps are "
                         f"{tuple(scene.xyz.shape[:3])}; use the cameras recovered from these point maps.")
    valid = cameras.valid.cpu().numpy() if cameras.valid is not None else None
    return dataclasses.replace(scene, depth=_array(cameras.depth), K=_array(cameras.K),
                               cams2world=_array(cameras.cams2world), residuals=_array(cameras.residuals), valid=valid)


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def point_maps_from_scene(scene: Scene) -> tuple[PointMaps, Cameras | None]:
    """The point maps of a loaded scene (its inputs: xyz as generated, the user's mask) and its
    cameras (with the points the fit used) when post-optimization ran."""
    mask = torch.from_numpy(scene.mask) if scene.mask is not None else None
    maps = PointMaps(xyz=torch.from_numpy(scene.xyz).float(), rgb=torch.from_numpy(scene.rgb).float() / 255.0,
                     mask=mask)
    if scene.K is None or scene.cams2world is None or scene.depth is None:
        return maps, None
    residuals = scene.residuals if scene.residuals is not None else np.zeros(scene.num_frames, np.float32)
    valid = torch.from_numpy(scene.valid) if scene.valid is not None else None
    cameras = Cameras(K=torch.from_numpy(scene.K), cams2world=torch.from_numpy(scene.cams2world),
                      depth=torch.from_numpy(scene.depth), residuals=torch.from_numpy(residuals), valid=valid)
    return maps, cameras


def camera_set(scene: Scene, source: str | Path = "The scene") -> CameraSet:
    """The scene's recovered cameras as a :class:`CameraSet` (K [3, 3] or [F, 3, 3], cams2world
    [F, 4, 4], the frames' width and height); a ValueError naming ``source`` when post-optimization
    has not run."""
    if scene.K is None or scene.cams2world is None:
        raise ValueError(f"{source} has no cameras (K, cams2world); run `fourdnex postopt` on it first "
                         "(post-optimization recovers them).")
    height, width = scene.rgb.shape[1:3]
    return CameraSet(scene.K, scene.cams2world, width, height)


def depth_image(depth: torch.Tensor, valid: torch.Tensor | None = None, *,
                percentiles: tuple[float, float] = (1.0, 99.0)) -> torch.Tensor:
    """Depth [F, H, W] -> [F, H, W] in [0, 1], near bright: inverse depth scaled between its
    ``percentiles`` over the clip (and clipped), so a few flying pixels next to the camera do not
    turn the rest of the picture black.

    Pixels without a positive depth (or outside ``valid``) are 0.
    """
    usable = depth > 0
    if valid is not None:
        usable &= valid
    inverse = torch.where(usable, 1.0 / depth.clamp_min(1e-12), 0.0)
    if not usable.any():
        return torch.zeros_like(depth, dtype=torch.float32)
    values = inverse[usable].double()
    values = values[:: values.numel() // _PERCENTILE_SAMPLE + 1]  # torch.quantile takes at most 2**24 values
    low, high = torch.quantile(values, torch.tensor(percentiles, dtype=values.dtype) / 100.0)
    scaled = (inverse - low) / (high - low).clamp_min(1e-12)
    return torch.where(usable, scaled, 0.0).float().clamp(0.0, 1.0)
