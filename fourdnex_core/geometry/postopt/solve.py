"""``post_optimize``: the whole fit, from XYZ frames to a :class:`PostOptResult`."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fourdnex_core.geometry.postopt.inputs import check_inputs, check_options
from fourdnex_core.geometry.postopt.linear_start import initial_state
from fourdnex_core.geometry.postopt.problem import Problem, RobustLoss, free_intrinsics
from fourdnex_core.geometry.postopt.models import PRINCIPAL_POINT, ZOOM, CameraModel, select_model
from fourdnex_core.geometry.postopt.result import PostOptResult
from fourdnex_core.geometry.postopt.sampling import draw_samples, scene_normalization

_INIT_POINTS_PER_FRAME = 2048  # samples per frame for the linear start (the refinement uses all samples)


def post_optimize(
    xyz: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    share_focal: bool = True,
    fix_principal_point: bool | None = None,
    zoom: bool | None = None,
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
        fix_principal_point: True keeps ``(cx, cy)`` at the image centre ``((W-1)/2, (H-1)/2)``,
            False fits it; None (default) keeps it there unless the data supports fitting it
            (see :mod:`~fourdnex_core.geometry.postopt.models`).
        zoom: with a shared K, True also fits a focal per frame (fx / fy and the principal
            point shared: a zoom), False does not; None (default) fits one when the data
            supports it. The result's ``camera_model`` says what was fitted.
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
    check_options(focal, iterations, robust, max_points_per_frame)
    if zoom and (focal is not None or not share_focal):
        raise ValueError("zoom=True fits a focal per frame on top of one shared K; it cannot go with a known focal "
                         "or share_focal=False (which already fits each frame's own intrinsics).")
    check_inputs(xyz, mask, min_confidence)
    xyz = xyz.detach()
    _, height, width, _ = xyz.shape
    samples = draw_samples(xyz, mask, min_confidence, max_points_per_frame, seed)
    centre, scale, precision = scene_normalization(samples, xyz.dtype)
    points = torch.where(samples.weights[..., None] > 0, (samples.points - centre) / scale, 0.0)

    shared = share_focal or focal is not None
    problem = Problem(samples.pixels(width), points, samples.weights, robust, shared,
                      free_intrinsics(fix_principal_point is not False, focal), precision, zoom=bool(zoom))
    candidates = (PRINCIPAL_POINT,) if fix_principal_point is None else ()
    if zoom is None and shared and focal is None:
        candidates = (*candidates, ZOOM)
    state = initial_state(problem.head(_INIT_POINTS_PER_FRAME), height, width, focal)
    problem, state, iterations_run, chosen, evidence = select_model(problem, state, candidates, iterations,
                                                                    callback)
    model = CameraModel(principal_point="fitted" if 2 in problem.free else "image centre",
                        focal="known" if focal is not None else "zoom" if problem.zoom else
                        "shared" if shared else "per frame", from_data=chosen, evidence=evidence)
    return PostOptResult.from_cameras(xyz, mask, min_confidence, state.intrinsics, state.rotation,
                                      state.translation * scale + centre,
                                      shared_intrinsics=shared and not problem.zoom, iterations=iterations_run,
                                      camera_model=model)
