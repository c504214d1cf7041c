"""Synthetic 4D scenes with known answers, for tests, benchmarks and the demo.

A scene is ray-cast analytically: a checkered ground plane, a far sky dome that catches every
other ray, and a few spheres and boxes standing on the ground, some of them moving. A camera
moves along an arc while looking at the middle of the scene. Every frame is rendered to
pixel-aligned RGB and XYZ (the point seen at each pixel), in the same layout 4DNeX generates:
XYZ is expressed in the first camera's frame, so ``cams2world[0]`` is the identity.

Camera convention: OpenCV, see :mod:`fourdnex_core.geometry.cameras`. Scene units: the first
camera stands 1 unit above the ground; objects stand 3 to 7.5 units in front of it, the sky
dome 40 units away.

Corruptions mimic what generated XYZ suffers from, each applied to its own pixels:

- ``noise``: Gaussian noise on every coordinate, its standard deviation a fraction of the
  pixel's depth (generated geometry is less certain far away);
- ``outlier_fraction``: points thrown off their pixel's ray by 0.2 to 1 times their depth in a
  random direction (flying pixels at edges, wrong sky);
- ``invalid_fraction``: NaN or +-inf coordinates, flagged in ``valid``.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from fourdnex_core.geometry.cameras import backproject, cams2world_matrix, intrinsics_matrix, pixel_rays
from fourdnex_core.geometry.cameras import principal_point_at_centre
from fourdnex_core.geometry.point_maps import PointMaps, scene_from
from fourdnex_core.scene_file import Scene

_GROUND_Y = 1.0          # ground plane y (y points down), relative to the scene's origin
_SKY_RADIUS = 40.0       # sky dome around the scene's origin
_LOOK_AT = (0.0, 0.4, 5.0)
_ARC_DEGREES = 24.0      # camera path angle around the look-at point at camera_motion = 1
_HIT_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class SyntheticScene:
    """A rendered synthetic 4D scene and its ground truth.

    rgb: [F, H, W, 3] float in [0, 1].
    xyz: [F, H, W, 3] observed point maps in the first camera's frame, with the requested
        noise, outliers and invalid (NaN/inf) pixels.
    depth: [F, H, W] true camera-space z of the surface at each pixel.
    K: [3, 3] true intrinsics of the first frame (OpenCV convention).
    intrinsics: [F, 3, 3] true intrinsics of every frame (all equal to K unless zooming).
    cams2world: [F, 4, 4] true camera-to-world transforms; ``cams2world[0]`` is the identity.
    valid: [F, H, W] bool, False where xyz was made non-finite.
    outliers: [F, H, W] bool, True where xyz was thrown off its ray.
    moving: [F, H, W] bool, True where the pixel sees a moving object.
    """

    rgb: torch.Tensor
    xyz: torch.Tensor
    depth: torch.Tensor
    K: torch.Tensor
    cams2world: torch.Tensor
    valid: torch.Tensor
    outliers: torch.Tensor
    moving: torch.Tensor
    intrinsics: torch.Tensor

    def clean_xyz(self) -> torch.Tensor:
        """The uncorrupted point maps from the true depth and cameras. Returns [F, H, W, 3]."""
        return backproject(self.depth, self.intrinsics, self.cams2world)

    def to_scene_file(self) -> Scene:
        """The observed RGB and XYZ as a :class:`~fourdnex_core.scene_file.Scene` (no cameras yet)."""
        return scene_from(PointMaps(xyz=self.xyz, rgb=self.rgb))


@dataclasses.dataclass(frozen=True)
class _Objects:
    """Per-frame object geometry in the scene's frame (before moving to the first camera's frame)."""

    sphere_centres: torch.Tensor   # [F, S, 3]
    sphere_radii: torch.Tensor     # [S]
    sphere_colours: torch.Tensor   # [S, 3]
    sphere_moving: torch.Tensor    # [S] bool
    box_min: torch.Tensor          # [F, B, 3]
    box_max: torch.Tensor          # [F, B, 3]
    box_colours: torch.Tensor      # [B, 3]
    box_moving: torch.Tensor       # [B] bool

    def frames(self, chunk: slice) -> _Objects:
        """The objects in the frames ``chunk``."""
        return dataclasses.replace(self, sphere_centres=self.sphere_centres[chunk], box_min=self.box_min[chunk],
                                   box_max=self.box_max[chunk])


def make_synthetic_scene(
    num_frames: int = 13,
    height: int = 60,
    width: int = 90,
    *,
    focal: float | tuple[float, float] | None = None,
    principal_point: tuple[float, float] | None = None,
    zoom: float = 1.0,
    camera_motion: float = 1.0,
    moving_scale: float = 1.0,
    noise: float = 0.0,
    outlier_fraction: float = 0.0,
    invalid_fraction: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> SyntheticScene:
    """Render a synthetic scene with known intrinsics, cameras and depth.

    Args:
        num_frames, height, width: output size F, H, W.
        focal: focal length in pixels (fx = fy), or an ``(fx, fy)`` pair; default gives a 60 degree
            horizontal field of view. This is the first frame's focal.
        principal_point: ``(cx, cy)`` in pixels; default the image centre.
        zoom: the last frame's focal as a multiple of the first's; the focal changes linearly
            over the frames in between (1 = no zoom).
        camera_motion: scales the camera path (0 = static camera, 1 = a 24 degree arc).
        moving_scale: scales the size of the moving sphere and box (3 makes them cover large
            parts of the frames: large dynamic regions).
        noise: XYZ noise standard deviation as a fraction of depth (0.01 = 1 %).
        outlier_fraction: share of pixels whose XYZ is thrown off its ray.
        invalid_fraction: share of pixels whose XYZ is NaN or infinite.
        seed: seeds object placement and every corruption.
        dtype: float dtype of the returned tensors (rendering runs in float64).
    """
    _check_arguments(num_frames, height, width, focal, noise, outlier_fraction, invalid_fraction)
    if not zoom > 0 or not moving_scale > 0:
        raise ValueError(f"zoom and moving_scale must be positive, got {zoom} and {moving_scale}.")
    generator = torch.Generator().manual_seed(seed)
    if focal is None:
        focal = (width / 2.0) / math.tan(math.radians(30.0))
    fx, fy = focal if isinstance(focal, tuple) else (focal, focal)
    cx, cy = principal_point if principal_point is not None else principal_point_at_centre(height, width)
    f64 = torch.float64
    scale = torch.linspace(1.0, zoom, num_frames, dtype=f64)
    intrinsics = intrinsics_matrix(fx * scale, fy * scale, torch.tensor(cx, dtype=f64), torch.tensor(cy, dtype=f64))

    scene_cams = _camera_path(num_frames, camera_motion)
    objects = _place_objects(num_frames, generator, moving_scale)
    rays_cam = pixel_rays(intrinsics, height, width)                              # [F, H, W, 3]
    directions = torch.einsum("fij,fhwj->fhwi", scene_cams[:, :3, :3], rays_cam)  # [F, H, W, 3]
    origins = scene_cams[:, None, None, :3, 3].expand_as(directions)
    casts = [_ray_cast(origins[chunk], directions[chunk], objects.frames(chunk))
             for chunk in _frame_chunks(num_frames, height * width)]
    depth, colour, moving = (torch.cat(parts) for parts in zip(*casts, strict=True))

    first_from_scene = torch.linalg.inv(scene_cams[0])
    cams2world = first_from_scene @ scene_cams
    cams2world[0] = torch.eye(4, dtype=f64)
    xyz = backproject(depth, intrinsics, cams2world)
    xyz, valid, outliers = _corrupt(xyz, depth, noise, outlier_fraction, invalid_fraction, generator)
    return SyntheticScene(
        rgb=colour.to(dtype), xyz=xyz.to(dtype), depth=depth.to(dtype), K=intrinsics[0].to(dtype),
        cams2world=cams2world.to(dtype), valid=valid, outliers=outliers, moving=moving,
        intrinsics=intrinsics.to(dtype),
    )


def _frame_chunks(num_frames: int, pixels: int, budget: int = 2_000_000) -> list[slice]:
    """Slices of frames holding about ``budget`` pixels each: ray casting holds a few float64
    copies per surface of every pixel it casts, so casting all frames at once would not fit."""
    step = max(1, budget // pixels)
    return [slice(start, start + step) for start in range(0, num_frames, step)]


def _check_arguments(num_frames: int, height: int, width: int, focal: float | tuple[float, float] | None,
                     noise: float, outlier_fraction: float, invalid_fraction: float) -> None:
    if num_frames < 1 or height < 2 or width < 2:
        raise ValueError(
            f"A synthetic scene needs num_frames >= 1 and height, width >= 2; got ({num_frames}, {height}, {width})."
        )
    focals = focal if isinstance(focal, tuple) else (focal,)
    if focal is not None and not all(value > 0 for value in focals):
        raise ValueError(f"focal must be a positive number of pixels, got {focal}.")
    if noise < 0:
        raise ValueError(f"noise is a standard deviation relative to depth and must be >= 0, got {noise}.")
    for name, value in (("outlier_fraction", outlier_fraction), ("invalid_fraction", invalid_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}.")
    if outlier_fraction + invalid_fraction >= 1.0:
        raise ValueError(
            f"outlier_fraction + invalid_fraction must leave some clean pixels, got {outlier_fraction + invalid_fraction}."
        )


def _look_at(eye: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Camera-to-world rotations looking from eye [F, 3] at target [3], y down. Returns [F, 3, 3]."""
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    up = torch.tensor([0.0, -1.0, 0.0], dtype=eye.dtype).expand_as(forward)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up), dim=-1)
    down = torch.linalg.cross(forward, right)
    return torch.stack((right, down, forward), dim=-1)


def _camera_path(num_frames: int, camera_motion: float) -> torch.Tensor:
    """Cameras on an arc around the look-at point, rising slightly. Returns cams2world [F, 4, 4]."""
    target = torch.tensor(_LOOK_AT, dtype=torch.float64)
    progress = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)
    angle = torch.deg2rad(torch.tensor(_ARC_DEGREES * camera_motion, dtype=torch.float64)) * progress
    radius = float(target[2])
    eye = torch.stack(
        (radius * torch.sin(angle), -0.3 * camera_motion * progress, target[2] - radius * torch.cos(angle)), dim=-1
    )
    return cams2world_matrix(_look_at(eye, target), eye)


def _place_objects(num_frames: int, generator: torch.Generator, moving_scale: float = 1.0) -> _Objects:
    """Three spheres and two boxes on the ground at random spots; one sphere and one box move,
    their size times ``moving_scale``."""

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)

    time = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)[:, None]
    radii = uniform(0.35, 0.7, 3)
    radii[0] *= moving_scale
    base = torch.stack((uniform(-1.8, 1.8, 3), _GROUND_Y - radii, uniform(3.5, 7.0, 3)), dim=-1)
    sphere_moving = torch.tensor([True, False, False])
    sweep = torch.zeros(num_frames, 3, 3, dtype=torch.float64)
    sweep[:, 0, 0] = 1.2 * torch.sin(math.pi * time[:, 0])       # moving sphere: side to side
    sweep[:, 0, 1] = -0.6 * torch.sin(math.pi * time[:, 0]) ** 2  # and a hop
    sphere_centres = base[None] + sweep

    half = torch.stack((uniform(0.25, 0.6, 2), uniform(0.3, 0.8, 2), uniform(0.25, 0.6, 2)), dim=-1)
    half[0] *= moving_scale
    centre = torch.stack((uniform(-2.0, 2.0, 2), _GROUND_Y - half[:, 1], uniform(4.0, 7.5, 2)), dim=-1)
    box_moving = torch.tensor([True, False])
    slide = torch.zeros(num_frames, 2, 3, dtype=torch.float64)
    slide[:, 0, 2] = -1.0 * time[:, 0]                             # moving box: towards the camera
    box_centres = centre[None] + slide
    return _Objects(
        sphere_centres=sphere_centres, sphere_radii=radii, sphere_colours=uniform(0.2, 1.0, 3, 3),
        sphere_moving=sphere_moving, box_min=box_centres - half, box_max=box_centres + half,
        box_colours=uniform(0.2, 1.0, 2, 3), box_moving=box_moving,
    )


def _ray_cast(origins: torch.Tensor, directions: torch.Tensor,
              objects: _Objects) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest hit along each ray.

    origins, directions: [F, H, W, 3] in the scene's frame; directions have camera-space z = 1,
    so the ray parameter of a hit is its depth.
    Returns (depth [F, H, W], colour [F, H, W, 3] in [0, 1], moving [F, H, W] bool).
    """
    frames = origins.shape[0]
    hits = [_hit_ground(origins, directions), _hit_sky(origins, directions)]
    for index in range(objects.sphere_radii.shape[0]):
        centre = objects.sphere_centres[:, index].reshape(frames, 1, 1, 3)
        hits.append(_hit_sphere(origins, directions, centre, objects.sphere_radii[index]))
    for index in range(objects.box_colours.shape[0]):
        low = objects.box_min[:, index].reshape(frames, 1, 1, 3)
        high = objects.box_max[:, index].reshape(frames, 1, 1, 3)
        hits.append(_hit_box(origins, directions, low, high))
    distances = torch.stack([hit for hit, _ in hits], dim=-1)              # [F, H, W, surfaces]
    normals = torch.stack([normal for _, normal in hits], dim=-2)           # [F, H, W, surfaces, 3]
    depth, nearest = distances.min(dim=-1)
    normal = torch.gather(normals, -2, nearest[..., None, None].expand(*nearest.shape, 1, 3))[..., 0, :]
    points = origins + depth[..., None] * directions

    checker = ((torch.floor(points[..., 0]) + torch.floor(points[..., 2])) % 2)[..., None]
    ground = 0.35 + 0.3 * checker * torch.tensor([1.0, 0.9, 0.7], dtype=torch.float64)
    elevation = (-directions[..., 1] / directions.norm(dim=-1)).clamp(0, 1)[..., None]
    sky = torch.tensor([0.85, 0.9, 1.0], dtype=torch.float64) * (1 - elevation) + torch.tensor(
        [0.3, 0.5, 0.9], dtype=torch.float64) * elevation
    palette = torch.cat((objects.sphere_colours, objects.box_colours))[None, None, None].expand(
        *depth.shape, -1, 3)
    surface_colours = torch.cat((ground[..., None, :], sky[..., None, :], palette), dim=-2)
    albedo = torch.gather(surface_colours, -2, nearest[..., None, None].expand(*nearest.shape, 1, 3))[..., 0, :]
    light = torch.nn.functional.normalize(torch.tensor([-0.4, -1.0, -0.3], dtype=torch.float64), dim=0)
    shading = 0.35 + 0.65 * (normal @ light).clamp(min=0)[..., None]
    colour = torch.where((nearest == 1)[..., None], albedo, albedo * shading).clamp(0, 1)

    moving_surfaces = torch.cat((torch.tensor([False, False]), objects.sphere_moving, objects.box_moving))
    return depth, colour, moving_surfaces[nearest]


def _no_hit(shape: torch.Size) -> torch.Tensor:
    return torch.full(shape, torch.inf, dtype=torch.float64)


def _hit_ground(origins: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray parameter [F, H, W] (inf for a miss) and normal [F, H, W, 3] of the ground plane y = _GROUND_Y."""
    distance = (_GROUND_Y - origins[..., 1]) / directions[..., 1]
    distance = torch.where(distance > _HIT_EPS, distance, _no_hit(distance.shape))
    normal = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64).expand_as(origins)
    return distance, normal


def _hit_sphere(origins: torch.Tensor, directions: torch.Tensor, centre: torch.Tensor,
                radius: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest positive ray parameter [F, H, W] (inf for a miss) and outward normal [F, H, W, 3]."""
    offset = origins - centre
    a = (directions * directions).sum(-1)
    b = (offset * directions).sum(-1)
    c = (offset * offset).sum(-1) - radius**2
    discriminant = b * b - a * c
    root = torch.sqrt(discriminant.clamp(min=0))
    near, far = (-b - root) / a, (-b + root) / a
    distance = torch.where(near > _HIT_EPS, near, far)
    distance = torch.where((discriminant >= 0) & (distance > _HIT_EPS), distance, _no_hit(distance.shape))
    points = origins + distance.nan_to_num(posinf=0)[..., None] * directions
    normal = torch.nn.functional.normalize(points - centre, dim=-1)
    return distance, normal


def _hit_sky(origins: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sky dome, seen from inside: every ray hits it. The normal points inwards."""
    distance, normal = _hit_sphere(origins, directions, torch.zeros(3, dtype=torch.float64), _SKY_RADIUS)
    return distance, -normal


def _hit_box(origins: torch.Tensor, directions: torch.Tensor, low: torch.Tensor,
             high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Axis-aligned box by the slab method. Returns ray parameter [F, H, W] and normal [F, H, W, 3]."""
    inverse = 1.0 / directions
    t_low, t_high = (low - origins) * inverse, (high - origins) * inverse
    t_near = torch.minimum(t_low, t_high)
    t_far = torch.maximum(t_low, t_high)
    entry, axis = t_near.max(dim=-1)
    exit_ = t_far.min(dim=-1).values
    hit = (entry <= exit_) & (entry > _HIT_EPS)
    distance = torch.where(hit, entry, _no_hit(entry.shape))
    normal = torch.zeros_like(origins)
    normal.scatter_(-1, axis[..., None], -torch.sign(torch.gather(directions, -1, axis[..., None])))
    return distance, normal


def _corrupt(xyz: torch.Tensor, depth: torch.Tensor, noise: float, outlier_fraction: float,
             invalid_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply noise, outliers and invalid values. xyz: [F, H, W, 3]; depth: [F, H, W].

    Returns (xyz [F, H, W, 3], valid [F, H, W], outliers [F, H, W]).
    """
    draw = torch.rand(depth.shape, generator=generator, dtype=torch.float64)
    invalid = draw < invalid_fraction
    outliers = (draw >= invalid_fraction) & (draw < invalid_fraction + outlier_fraction)
    gaussian = torch.randn(xyz.shape, generator=generator, dtype=torch.float64)
    xyz = xyz + noise * depth[..., None] * gaussian

    direction = torch.nn.functional.normalize(
        torch.randn(xyz.shape, generator=generator, dtype=torch.float64), dim=-1)
    magnitude = 0.2 + 0.8 * torch.rand(depth.shape, generator=generator, dtype=torch.float64)
    xyz = torch.where(outliers[..., None], xyz + (magnitude * depth)[..., None] * direction, xyz)

    kind = torch.randint(0, 3, depth.shape, generator=generator)
    bad_values = torch.tensor([torch.nan, torch.inf, -torch.inf], dtype=torch.float64)[kind]
    bad_axis = torch.randint(0, 3, depth.shape, generator=generator)
    corrupted = xyz.clone()
    corrupted.scatter_(-1, bad_axis[..., None], bad_values[..., None])
    xyz = torch.where(invalid[..., None], corrupted, xyz)
    return xyz, ~invalid, outliers
