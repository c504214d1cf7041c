"""Levenberg-Marquardt on the exact point-to-ray objective, batched over frames, with iteratively
reweighted robust weights; shared intrinsics are solved through a Schur complement."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from fourdnex_core.geometry.postopt.problem import ZOOM, Problem, RayGeometry, State, ray_geometry
from fourdnex_core.geometry.postopt.robust import median_distance, robust_cost, robust_weights, robust_width

logger = logging.getLogger(__name__)

_MAX_DAMPING_TRIES = 8
_CONVERGED_DECREASE = 1e-4  # stop once an iteration lowers the robust cost by less than this fraction


def _jacobian(problem: Problem, geometry: RayGeometry,
              out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals across the rays and their Jacobian, two rows per point.

    The residual ``e = Y - d r`` is perpendicular to the ray, so it is written in an orthonormal
    basis of the plane across the ray, ``b1 = c (1, 0, -rx)`` and
    ``b2 = (c / |r|) (-rx ry, 1 + rx^2, -ry)`` with ``c = 1 / sqrt(1 + rx^2)``: ``e_i = b_i . Y``.
    Its squared norm is the squared point-to-ray distance, and the gradient through this basis
    is exact: ``d(b . Y)/dw = b x Y``, ``d(b . Y)/dt = -b``, ``d(b . Y)/dr_j = -d b_j``.

    Returns residuals [F, 2, N] and the Jacobian [F, P, 2, N] (parameters first, so that every
    column is a contiguous plane). Parameters: rotation increment w (R <- R exp(w)), translation
    increment in camera axes (t <- t + R dt), the per-frame intrinsics, then the shared ones, as
    (log fx, log fy, cx / fx, cy / fy, log zoom) increments. ``out``: a buffer for the Jacobian
    from an earlier call (large allocations are slow on the CPU).
    """
    camera, ray_x, ray_y, inverse_norm, offset_x, offset_y = geometry
    cam_x, cam_y, cam_z = camera.unbind(1)
    depth = geometry.depth
    widen = 1.0 + ray_x.square()
    first_scale = widen.rsqrt()                                   # c
    second_scale = first_scale * inverse_norm.sqrt()              # c / |r|
    columns = (*problem.frame_columns, *problem.shared_columns)
    shape = (camera.shape[0], 6 + len(columns), 2, camera.shape[2])
    jacobian = out if out is not None else torch.empty(shape, dtype=camera.dtype, device=camera.device)
    first, second = jacobian[:, :, 0], jacobian[:, :, 1]
    # b1 = c (1, 0, -rx); b1 x Y = c (rx Yy, -(rx Yx + Yz), Yy)
    torch.mul(ray_x * cam_y, first_scale, out=first[:, 0])
    torch.mul(torch.addcmul(cam_z, ray_x, cam_x), first_scale, out=first[:, 1]).neg_()
    torch.mul(cam_y, first_scale, out=first[:, 2])
    torch.neg(first_scale, out=first[:, 3])
    first[:, 4].zero_()
    torch.mul(ray_x, first_scale, out=first[:, 5])
    # b2 = k (-rx ry, 1 + rx^2, -ry); b2 x Y = k ((1 + rx^2) Yz + ry Yy, ry (rx Yz - Yx), -(rx ry Yy + (1 + rx^2) Yx))
    cross_term = ray_x * ray_y
    torch.mul(torch.addcmul(ray_y * cam_y, widen, cam_z), second_scale, out=second[:, 0])
    torch.mul(torch.addcmul(-cam_x, ray_x, cam_z) * ray_y, second_scale, out=second[:, 1])
    torch.mul(torch.addcmul(cross_term * cam_y, widen, cam_x), second_scale, out=second[:, 2]).neg_()
    torch.mul(cross_term, second_scale, out=second[:, 3])
    torch.mul(widen, second_scale, out=second[:, 4]).neg_()
    torch.mul(ray_y, second_scale, out=second[:, 5])
    basis = ((first_scale, None), (-cross_term * second_scale, widen * second_scale))  # (b_x, b_y) of b1, b2
    for row, (along_x, along_y) in enumerate(basis):
        for column, index in enumerate(columns, start=6):
            target = jacobian[:, column, row]
            if index == ZOOM:
                value = along_x * ray_x if along_y is None else along_x * ray_x + along_y * ray_y
            elif index % 2 == 0:
                value = along_x * (ray_x if index < 2 else 1.0)
            elif along_y is None:
                target.zero_()
                continue
            else:
                value = along_y * (ray_y if index < 2 else 1.0)
            torch.mul(value, depth, out=target)
    if problem.zoom and problem.shared:
        jacobian[0, 6].zero_()  # the first frame's zoom is 1: it fixes the scale of the shared focal
    residuals = torch.stack((first_scale * offset_x,
                             second_scale * (widen * offset_y - cross_term * offset_x)), dim=1)
    return residuals, jacobian


def _solve_step(hessian: torch.Tensor, gradient: torch.Tensor, damping: float, num_shared: int) -> torch.Tensor:
    """Damped Gauss-Newton step for per-frame normal equations.

    hessian: [F, P, P], gradient: [F, P]; the last ``num_shared`` parameters are shared by all
    frames: their rows/columns are summed over frames and eliminated by a Schur complement.
    Returns the step [F, P] (the shared part equal across frames).
    """
    diagonal = hessian.diagonal(dim1=-2, dim2=-1)
    floor = 1e-12 * diagonal.amax().clamp(min=1e-300)
    if num_shared == 0:
        damped = hessian + torch.diag_embed(damping * diagonal + floor)
        return torch.linalg.solve(damped, -gradient)
    own = hessian.shape[-1] - num_shared
    pose, intr = slice(0, own), slice(own, None)
    h_pp = hessian[:, pose, pose] + torch.diag_embed(damping * diagonal[:, pose] + floor)
    h_pk = hessian[:, pose, intr]
    h_kk = hessian[:, intr, intr].sum(0)
    h_kk = h_kk + torch.diag_embed(damping * h_kk.diagonal() + floor)
    g_p, g_k = gradient[:, pose], gradient[:, intr].sum(0)
    solved = torch.linalg.solve(h_pp, torch.cat((h_pk, g_p[..., None]), dim=-1))  # [F, own, k + 1]
    schur = h_kk - (h_pk.transpose(1, 2) @ solved[..., :-1]).sum(0)
    rhs = -g_k + (h_pk.transpose(1, 2) @ solved[..., -1:]).sum(0)[:, 0]
    step_k = torch.linalg.solve(schur, rhs)
    step_p = -solved[..., -1] - (solved[..., :-1] @ step_k)
    return torch.cat((step_p, step_k.expand(len(step_p), -1)), dim=-1)


def _apply_step(state: State, step: torch.Tensor, problem: Problem) -> State:
    """Move the state by a step [F, P] in the Jacobian's parametrisation."""
    rotation = state.rotation @ axis_angle_to_rotation_matrix(step[:, :3])
    translation = state.translation + (state.rotation @ step[:, 3:6, None])[..., 0]
    intrinsics = state.intrinsics.clone()
    for column, index in enumerate((*problem.frame_columns, *problem.shared_columns), start=6):
        if index == ZOOM:
            intrinsics[:, :2] *= torch.exp(step[:, column, None])
        elif index < 2:
            intrinsics[:, index] *= torch.exp(step[:, column])
        else:
            intrinsics[:, index] += intrinsics[:, index % 2] * step[:, column]
    return State(rotation, translation, intrinsics)


def levenberg_marquardt(problem: Problem, state: State, iterations: int,
                        callback: Callable[[int, float], None] | None = None) -> tuple[State, int]:
    """Robust Levenberg-Marquardt (IRLS weights refreshed each iteration). Returns (state, iterations run).

    ``callback(iteration, robust_cost)`` runs after each accepted step.
    """
    damping = 1e-4
    geometry = ray_geometry(problem, state)
    num_shared = len(problem.shared_columns)
    jacobian = None
    for iteration in range(iterations):
        residual, jacobian = _jacobian(problem, geometry, out=jacobian)
        distances = geometry.distances()
        median = median_distance(distances, problem)
        if bool((median <= problem.precision).all()):
            logger.debug("post-optimization: exact fit (to the XYZ's precision) after %d iterations.", iteration)
            return state, iteration
        width = robust_width(median, problem)
        weights = problem.weights * robust_weights(distances, problem, width)
        cost = robust_cost(distances, width, problem)
        frames, parameters = jacobian.shape[:2]
        root = weights.sqrt()[:, None]                              # H = (J sqrt(w)) (J sqrt(w))^T
        rows = jacobian.mul_(root[:, None]).view(frames, parameters, -1)
        hessian = rows @ rows.transpose(1, 2)
        gradient = (rows @ (residual * root).view(frames, -1, 1))[..., 0]
        for _ in range(_MAX_DAMPING_TRIES):
            step = _solve_step(hessian, gradient, damping, num_shared)
            candidate = _apply_step(state, step, problem)
            candidate_geometry = ray_geometry(problem, candidate)
            candidate_cost = robust_cost(candidate_geometry.distances(), width, problem)
            if candidate_cost <= cost:
                break
            damping *= 10.0
        else:
            logger.debug("post-optimization: converged after %d iterations (no further decrease).", iteration)
            return state, iteration
        state, geometry, damping = candidate, candidate_geometry, max(damping / 10.0, 1e-9)
        logger.debug("post-optimization iteration %d: robust cost %.3e -> %.3e", iteration, cost, candidate_cost)
        if callback is not None:
            callback(iteration + 1, float(candidate_cost))
        if cost - candidate_cost <= _CONVERGED_DECREASE * cost or step.abs().max() < 1e-12:
            return state, iteration + 1
    return state, iterations
