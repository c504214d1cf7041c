"""The sampled problem the cameras are solved on, the solver's unknowns, and the rays the
samples are seen along."""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, NamedTuple

import torch

RobustLoss = Literal["cauchy", "huber", "none"]


ZOOM = 4  # a per-frame focal scale (both focals times exp(z_f)), after the (fx, fy, cx, cy) indices


def free_intrinsics(fix_principal_point: bool, focal: float | tuple[float, float] | None) -> tuple[int, ...]:
    """Indices into (fx, fy, cx, cy) that the solver may change."""
    free = () if focal is not None else (0, 1)
    return free if fix_principal_point else (*free, 2, 3)


@dataclasses.dataclass(frozen=True)
class Problem:
    """The sampled correspondences and solver settings.

    uv: [F, N, 2] pixels; points: [F, N, 3] normalised XYZ; weights: [F, N] confidence (1 without
    a confidence map; 0 = padding), multiplying the robust weights everywhere.
    shared: one set of intrinsics for all frames; free: indices of (fx, fy, cx, cy) to solve.
    zoom: with shared intrinsics, also a focal scale per frame (the first frame's stays 1).
    precision: distance (normalised units) below which the XYZ cannot be trusted: a few ulps
    of its input dtype. A fit this close is exact; robust weights never resolve finer.
    """

    uv: torch.Tensor
    points: torch.Tensor
    weights: torch.Tensor
    robust: RobustLoss
    shared: bool
    free: tuple[int, ...]
    precision: float
    zoom: bool = False

    def head(self, count: int) -> Problem:
        """The first ``count`` samples of each frame (a random subset: samples come in random order)."""
        return dataclasses.replace(self, uv=self.uv[:, :count], points=self.points[:, :count],
                                   weights=self.weights[:, :count])

    @functools.cached_property
    def planes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The samples as contiguous planes: points [F, 3, N], u [F, N], v [F, N]."""
        return (self.points.transpose(1, 2).contiguous(), self.uv[..., 0].contiguous(),
                self.uv[..., 1].contiguous())

    @property
    def frame_columns(self) -> tuple[int, ...]:
        """Intrinsic parameters solved per frame (indices into fx, fy, cx, cy, zoom)."""
        if not self.shared:
            return self.free
        return (ZOOM,) if self.zoom else ()

    @property
    def shared_columns(self) -> tuple[int, ...]:
        """Intrinsic parameters shared by all frames."""
        return self.free if self.shared else ()


@dataclasses.dataclass(frozen=True)
class State:
    """Solver unknowns. rotation: [F, 3, 3], translation: [F, 3] (cams2world, normalised units),
    intrinsics: [F, 4] as (fx, fy, cx, cy)."""

    rotation: torch.Tensor
    translation: torch.Tensor
    intrinsics: torch.Tensor


class RayGeometry(NamedTuple):
    """The samples seen from the cameras of a state, as planes over the samples.

    camera: [F, 3, N] camera-space points Y; ray_x, ray_y: [F, N], the ray r = (rx, ry, 1) =
    K^-1 [u, v, 1]; inverse_norm: [F, N] 1 / |r|^2; offset_x, offset_y: [F, N], the offsets
    a = (Yx - rx Yz, Yy - ry Yz) of the point from the ray's point at the same z.
    """

    camera: torch.Tensor
    ray_x: torch.Tensor
    ray_y: torch.Tensor
    inverse_norm: torch.Tensor
    offset_x: torch.Tensor
    offset_y: torch.Tensor

    @property
    def depth(self) -> torch.Tensor:
        """Best depth d = r.Y / |r|^2 = Yz + (a . r) / |r|^2, [F, N]."""
        return self.camera[:, 2] + (self.offset_x * self.ray_x + self.offset_y * self.ray_y) * self.inverse_norm

    def distances(self) -> torch.Tensor:
        """Point-to-ray distances [F, N]: sqrt((ax^2 + ay^2 + (ax ry - ay rx)^2) / |r|^2), a sum of
        squares (exact for exact points)."""
        twist = self.offset_x * self.ray_y - self.offset_y * self.ray_x
        squared = self.offset_x.square() + self.offset_y.square() + twist.square()
        return (squared * self.inverse_norm).sqrt()


def ray_geometry(problem: Problem, state: State) -> RayGeometry:
    """Each sample's camera-space point, ray and offset from the ray."""
    points, u, v = problem.planes
    world_to_camera = state.rotation.transpose(1, 2).contiguous()
    bias = -(world_to_camera @ state.translation[..., None])
    camera = torch.baddbmm(bias, world_to_camera, points)
    fx, fy, cx, cy = (value[:, None] for value in state.intrinsics.unbind(-1))
    ray_x, ray_y = (u - cx) / fx, (v - cy) / fy
    inverse_norm = (1.0 + ray_x.square() + ray_y.square()).reciprocal()
    return RayGeometry(camera, ray_x, ray_y, inverse_norm, camera[:, 0] - ray_x * camera[:, 2],
                       camera[:, 1] - ray_y * camera[:, 2])


def dot(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Dot product over a last axis of length 3, elementwise (CPU reductions over 3 are slow)."""
    return first[..., 0] * second[..., 0] + first[..., 1] * second[..., 1] + first[..., 2] * second[..., 2]


def length(vectors: torch.Tensor) -> torch.Tensor:
    """Euclidean length over a last axis of length 3."""
    return dot(vectors, vectors).sqrt()
