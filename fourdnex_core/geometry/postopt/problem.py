"""The sampled problem the cameras are solved on, the solver's unknowns, and the rays the
samples are seen along."""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import torch

RobustLoss = Literal["cauchy", "huber", "none"]


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

    def head(self, count: int) -> Problem:
        """The first ``count`` samples of each frame (a random subset: samples come in random order)."""
        return dataclasses.replace(self, uv=self.uv[:, :count], points=self.points[:, :count],
                                   weights=self.weights[:, :count])


@dataclasses.dataclass(frozen=True)
class State:
    """Solver unknowns. rotation: [F, 3, 3], translation: [F, 3] (cams2world, normalised units),
    intrinsics: [F, 4] as (fx, fy, cx, cy)."""

    rotation: torch.Tensor
    translation: torch.Tensor
    intrinsics: torch.Tensor


class RayGeometry(NamedTuple):
    """The samples seen from the cameras of a state.

    cam_points: [F, N, 3] camera-space points Y; rays: [F, N, 3] r = K^-1 [u, v, 1];
    ray_sq: [F, N, 1] |r|^2; depth: [F, N, 1] best depth d = r.Y / |r|^2;
    residual: [F, N, 3] e = Y - d r, the offset from the ray.
    """

    cam_points: torch.Tensor
    rays: torch.Tensor
    ray_sq: torch.Tensor
    depth: torch.Tensor
    residual: torch.Tensor


def ray_geometry(problem: Problem, state: State) -> RayGeometry:
    """Each sample's camera-space point, ray, best depth and offset from the ray."""
    cam_points = (problem.points - state.translation[:, None]) @ state.rotation
    fx, fy, cx, cy = (value[:, None] for value in state.intrinsics.unbind(-1))
    ray_x = (problem.uv[..., 0] - cx) / fx
    ray_y = (problem.uv[..., 1] - cy) / fy
    rays = torch.stack((ray_x, ray_y, torch.ones_like(ray_x)), dim=-1)
    ray_sq = dot(rays, rays)[..., None]
    depth = dot(rays, cam_points)[..., None] / ray_sq
    return RayGeometry(cam_points, rays, ray_sq, depth, cam_points - depth * rays)


def dot(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Dot product over a last axis of length 3, elementwise (CPU reductions over 3 are slow)."""
    return first[..., 0] * second[..., 0] + first[..., 1] * second[..., 1] + first[..., 2] * second[..., 2]


def length(vectors: torch.Tensor) -> torch.Tensor:
    """Euclidean length over a last axis of length 3."""
    return dot(vectors, vectors).sqrt()
