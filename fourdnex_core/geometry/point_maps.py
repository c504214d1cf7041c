"""Point maps and recovered cameras as tensors, and their conversions to and from a ``Scene``.

* :class:`PointMaps`: XYZ frames [F, H, W, 3] with their colours and validity (a decoded video,
  an XYZ init, or a loaded scene's inputs);
* :class:`Cameras`: what post-optimization recovers (K, cams2world, depth, residuals);
* :func:`scene_from` (tensors to the ``scene.npz`` content), :func:`point_maps_from_scene` (back),
  :func:`point_maps_from_postopt` (cameras and registered points of a post-optimization);
* :func:`depth_image`: depth as a picture (inverse depth, near bright).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fourdnex_core.geometry.export_cameras import CameraSet
from fourdnex_core.geometry.postopt import PostOptResult
from fourdnex_core.scene_file import Scene


_PERCENTILE_SAMPLE = 1_000_000  # depth_image reads its percentiles from about this many pixels


@dataclasses.dataclass
class PointMaps:
    """xyz: [F, H, W, 3] scene units; rgb: [F, H, W, 3] in [0, 1] or None; mask: [F, H, W] bool or None."""

    xyz: torch.Tensor
    rgb: torch.Tensor | None = None
    mask: torch.Tensor | None = None

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
    depth [F, H, W], residuals [F]."""

    K: torch.Tensor
    cams2world: torch.Tensor
    depth: torch.Tensor
    residuals: torch.Tensor

    @property
    def height(self) -> int:
        return self.depth.shape[1]

    @property
    def width(self) -> int:
        return self.depth.shape[2]

    def camera_set(self) -> CameraSet:
        return CameraSet(self.K.double().numpy(), self.cams2world.double().numpy(), self.width, self.height)


def point_maps_from_postopt(point_maps: PointMaps, result: PostOptResult) -> tuple[Cameras, PointMaps]:
    """Cameras and the registered point maps (``R K^-1 d [u, v, 1] + t``) of a post-optimization."""
    cameras = Cameras(K=result.scene_K, cams2world=result.cams2world, depth=result.depth, residuals=result.residuals)
    registered = PointMaps(xyz=result.points, rgb=point_maps.rgb, mask=result.valid)
    return cameras, registered


def scene_from(point_maps: PointMaps, cameras: Cameras | None = None) -> Scene:
    """A :class:`Scene` (the ``scene.npz`` content) from point maps and, optionally, cameras."""
    if point_maps.rgb is None:
        raise ValueError("These point maps carry no colours (an XYZ init?); use the point maps of a decoded video.")
    rgb = (point_maps.rgb.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    mask = point_maps.mask.numpy() if point_maps.mask is not None else None
    if cameras is None:
        return Scene(rgb=rgb, xyz=point_maps.xyz.float().numpy(), mask=mask)
    if tuple(cameras.depth.shape) != tuple(point_maps.xyz.shape[:3]):
        raise ValueError(f"The cameras belong to frames of {tuple(cameras.depth.shape)}, the point maps are "
                         f"{tuple(point_maps.xyz.shape[:3])}; use the cameras recovered from these point maps.")
    return Scene(rgb=rgb, xyz=point_maps.xyz.float().numpy(), depth=cameras.depth.float().numpy(),
                 K=cameras.K.float().numpy(), cams2world=cameras.cams2world.float().numpy(), mask=mask,
                 residuals=cameras.residuals.float().numpy())


def point_maps_from_scene(scene: Scene) -> tuple[PointMaps, Cameras | None]:
    """The point maps of a loaded scene (its raw XYZ) and its cameras when post-optimization ran."""
    points = scene.point_mask()
    mask = torch.from_numpy(points) if points is not None else None
    maps = PointMaps(xyz=torch.from_numpy(scene.xyz).float(), rgb=torch.from_numpy(scene.rgb).float() / 255.0,
                     mask=mask)
    if scene.K is None or scene.cams2world is None or scene.depth is None:
        return maps, None
    residuals = scene.residuals if scene.residuals is not None else np.zeros(scene.num_frames, np.float32)
    cameras = Cameras(K=torch.from_numpy(scene.K), cams2world=torch.from_numpy(scene.cams2world),
                      depth=torch.from_numpy(scene.depth), residuals=torch.from_numpy(residuals))
    return maps, cameras


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
