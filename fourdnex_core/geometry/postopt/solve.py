"""``post_optimize``: the whole fit, from XYZ frames to a :class:`PostOptResult`."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fourdnex_core.geometry.cameras import cams2world_matrix, intrinsics_matrix, pixel_grid
from fourdnex_core.geometry.postopt.inputs import (
    check_options,
    point_weights,
    sample_pixels,
    scene_normalization,
    usable_points,
)
from fourdnex_core.geometry.postopt.linear_start import initial_state
from fourdnex_core.geometry.postopt.problem import Problem, RobustLoss, free_intrinsics
from fourdnex_core.geometry.postopt.refine import levenberg_marquardt
from fourdnex_core.geometry.postopt.result import PostOptResult, closed_form_depth, warn_if_behind

_INIT_POINTS_PER_FRAME = 2048  # samples per frame for the linear start (the refinement uses all samples)


def post_optimize(
    xyz: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    share_focal: bool = True,
    fix_principal_point: bool = True,
    focal: float | tuple[float, float] | None = None,
    iterations: int = 20,
    robust: RobustLoss = "cauchy",
    max_points_per_frame: int | None = 4096,
    seed: int = 0,
    min_confidence: float = 0.0,
    callback: Callable[[int, float], None] | None = None,
) -> PostOptResult:
    """Recover intrinsics, camera poses and depth from XYZ frames.

    Args:
        xyz: [F, H, W, 3] points in scene units, in one world frame (4DNeX: the first camera's).
        mask: [F, H, W], optional: a bool validity mask (False drops a pixel: known sky...) or a
            float confidence map (>= 0) whose values weight each point in the linear start and
            the robust refinement; confidence 0 or NaN drops the pixel. Non-finite points are
            dropped either way.
        share_focal: one K for all frames (the paper); False fits each frame's own intrinsics.
        fix_principal_point: keep ``(cx, cy)`` at the image centre ``((W-1)/2, (H-1)/2)``.
        focal: known focal length in pixels (``fx = fy``, or a ``(fx, fy)`` pair); it is then kept.
        iterations: most Levenberg-Marquardt iterations; stops earlier once converged.
        robust: ``"cauchy"`` (default) or ``"huber"`` weights against outliers, or ``"none"``.
        max_points_per_frame: solve the cameras on a random sample of this many valid points per
            frame (None: all); depth and errors are always computed for every pixel.
        seed: seeds that sample.
        min_confidence: with a confidence map, also drop the pixels whose confidence is below this.
        callback: called as ``callback(iteration, robust_cost)`` after each Levenberg-Marquardt
            iteration (counting from 1), e.g. to step a progress bar; fewer than ``iterations``
            calls when the solver converges early.
    Returns:
        A :class:`PostOptResult`, in the dtype of ``xyz``.
    """
    check_options(focal, iterations, robust, max_points_per_frame, min_confidence)
    valid = usable_points(xyz, mask, min_confidence)
    _, height, width, _ = xyz.shape
    points64 = xyz.detach().to(torch.float64)
    centre, scale, precision = scene_normalization(points64, valid, xyz.dtype)
    points_n = torch.where(valid[..., None], (points64 - centre) / scale, 0.0)
    uv = pixel_grid(height, width, dtype=torch.float64, device=xyz.device)
    sample_index, sample_weight = sample_pixels(point_weights(valid, mask), max_points_per_frame, seed)
    sample_points = torch.gather(points_n.flatten(1, 2), 1, sample_index[..., None].expand(-1, -1, 3))
    sample_uv = uv.reshape(-1, 2)[sample_index]

    problem = Problem(sample_uv, sample_points, sample_weight, robust, share_focal or focal is not None,
                       free_intrinsics(fix_principal_point, focal), precision)
    state = initial_state(problem.head(_INIT_POINTS_PER_FRAME), height, width, focal)
    state, iterations_run = levenberg_marquardt(problem, state, iterations, callback)

    rotation, translation = state.rotation, state.translation * scale + centre
    intrinsics = intrinsics_matrix(*state.intrinsics.unbind(-1))
    depth = closed_form_depth(points64, valid, intrinsics, rotation, translation)
    warn_if_behind(depth, valid)
    return PostOptResult.from_depth(xyz.detach(), valid, intrinsics, cams2world_matrix(rotation, translation), depth,
                                    shared_intrinsics=problem.shared, iterations=iterations_run)
