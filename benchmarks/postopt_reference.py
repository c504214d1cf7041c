"""Reference post-optimization the authors' way: Adam over every unknown, for comparison only.

It is not part of the library (nothing ships or runs it): ``bench_postopt.py`` compares the
library's solver with it, and ``tests/test_postopt_reference.py`` checks it. Run from this folder
(``python benchmarks/bench_postopt.py`` puts it on ``sys.path``).

The release minimises the same objective as :func:`~fourdnex_core.geometry.postopt.post_optimize`
(3D distance between each XYZ point and its back-projected pixel) by plain gradient descent:
Adam, 1500 iterations, learning rate 5e-3 for all unknowns, cameras starting at the identity,
rotations as 6D vectors (two columns, Gram-Schmidt), ``fx = 1.2 W``, ``fy = 1.2 H``, principal
point at the centre, one K for all frames, a depth per pixel.

Two things differ from the release, on purpose:

- The 6D rotations start at ``(1, 0, 0), (0, 1, 0)``, the identity. The release starts both
  3-vectors equal, which Gram-Schmidt cannot turn into a rotation.
- Depth starts at each point's z (its depth under an identity camera); the squared distance is
  averaged over valid pixels only, so NaN/inf points never enter the gradient.

What is kept, and is the reason :func:`post_optimize` exists: with a step of 5e-3 pixels per
iteration, the focal lengths move at most about 7.5 pixels from their initial guess, so K is
largely the guess; and 1500 full-resolution iterations are slow.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from fourdnex_core.geometry.cameras import cams2world_matrix, intrinsics_matrix, pixel_rays
from fourdnex_core.geometry.cameras import principal_point_at_centre
from fourdnex_core.geometry.postopt import PostOptResult, usable_points

logger = logging.getLogger(__name__)

RELEASE_ITERATIONS = 1500
RELEASE_LEARNING_RATE = 5e-3
RELEASE_FOCAL_FACTOR = 1.2


def rotation_6d_to_matrix(rotation_6d: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from 6D vectors (Zhou et al. 2019): Gram-Schmidt on two columns.

    rotation_6d: [..., 6], the first two columns of the rotation. Returns [..., 3, 3].
    """
    first = torch.nn.functional.normalize(rotation_6d[..., :3], dim=-1)
    second = rotation_6d[..., 3:] - (first * rotation_6d[..., 3:]).sum(-1, keepdim=True) * first
    second = torch.nn.functional.normalize(second, dim=-1)
    return torch.stack((first, second, torch.linalg.cross(first, second)), dim=-1)


def identity_rotation_6d(num_frames: int, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """6D vectors of identity rotations, [num_frames, 6]: columns (1, 0, 0) and (0, 1, 0)."""
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=dtype, device=device)
    return identity.repeat(num_frames, 1)


def _squared_distances(depth: torch.Tensor, intrinsics: torch.Tensor, cams2world: torch.Tensor,
                       target: torch.Tensor) -> torch.Tensor:
    """Squared distance between back-projected pixels and target points, per pixel.

    depth: [F, H, W]; intrinsics: [3, 3]; cams2world: [F, 4, 4]; target: [F, H, W, 3].
    Written per coordinate: small matrix products over 3-vectors are slow on CPU.
    """
    rays = pixel_rays(intrinsics, *depth.shape[1:])
    cam_x, cam_y = depth * rays[..., 0], depth * rays[..., 1]
    transform = cams2world[:, None, None]                        # [F, 1, 1, 4, 4]
    total = torch.zeros_like(depth)
    for axis in range(3):
        row = transform[..., axis, :]
        world = row[..., 0] * cam_x + row[..., 1] * cam_y + row[..., 2] * depth + row[..., 3]
        total = total + (world - target[..., axis]) ** 2
    return total


def post_optimize_reference(
    xyz: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    fix_principal_point: bool = True,
    iterations: int = RELEASE_ITERATIONS,
    learning_rate: float = RELEASE_LEARNING_RATE,
    progress: bool = True,
) -> PostOptResult:
    """Release-style post-optimization by Adam (slow; a baseline for :func:`post_optimize`).

    xyz: [F, H, W, 3] points in scene units; mask: [F, H, W] bool or None (non-finite points
    are always left out). Runs in float32. Returns a :class:`PostOptResult` with one shared K
    and the optimised per-pixel depth.
    """
    valid = usable_points(xyz, mask)
    if iterations < 0 or learning_rate <= 0:
        raise ValueError(f"iterations must be >= 0 and learning_rate > 0, got {iterations} and {learning_rate}.")
    frames, height, width, _ = xyz.shape
    target = torch.where(valid[..., None], xyz.detach().float(), 0.0)
    weight = valid.float() / valid.sum()
    cx, cy = principal_point_at_centre(height, width)
    device = xyz.device

    def parameter(value: torch.Tensor | float) -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.as_tensor(value, dtype=torch.float32, device=device).clone())

    rotation_6d = parameter(identity_rotation_6d(frames, device=device))
    translation = parameter(torch.zeros(frames, 3))
    depth = parameter(target[..., 2])
    focal = parameter([RELEASE_FOCAL_FACTOR * width, RELEASE_FOCAL_FACTOR * height])
    centre = parameter([cx, cy])
    unknowns = [rotation_6d, translation, depth, focal] + ([] if fix_principal_point else [centre])
    optimizer = torch.optim.Adam(unknowns, lr=learning_rate)

    def current_cameras() -> tuple[torch.Tensor, torch.Tensor]:
        intrinsics = intrinsics_matrix(focal[0], focal[1], centre[0], centre[1])
        return intrinsics, cams2world_matrix(rotation_6d_to_matrix(rotation_6d), translation)

    for _ in tqdm(range(iterations), desc="post-optimization (Adam reference)", disable=not progress):
        optimizer.zero_grad(set_to_none=True)
        intrinsics, cams2world = current_cameras()
        loss = (weight * _squared_distances(depth, intrinsics, cams2world, target)).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        intrinsics, cams2world = current_cameras()
        logger.debug("Adam reference post-optimization: %d iterations, focal %s", iterations, focal.tolist())
        return PostOptResult.from_depth(
            xyz.detach(), valid, intrinsics.expand(frames, 3, 3), cams2world, depth.detach(),
            shared_intrinsics=True, iterations=iterations,
        )
