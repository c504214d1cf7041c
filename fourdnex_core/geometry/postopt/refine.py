"""Levenberg-Marquardt on the exact point-to-ray objective, batched over frames, with iteratively
reweighted robust weights; shared intrinsics are solved through a Schur complement."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from fourdnex_core.geometry.postopt.problem import Problem, RayGeometry, State, dot, length, ray_geometry
from fourdnex_core.geometry.postopt.robust import median_distance, robust_cost, robust_weights, robust_width

logger = logging.getLogger(__name__)

_MAX_DAMPING_TRIES = 8
_CONVERGED_DECREASE = 1e-4  # stop once an iteration lowers the robust cost by less than this fraction


def _jacobian(problem: Problem, geometry: RayGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals across the rays and their Jacobian, two rows per point.

    The residual ``e = Y - d r`` is perpendicular to the ray, so it is written in an orthonormal
    basis ``(b1, b2)`` of the plane across the ray: ``e_i = b_i . Y``. Its squared norm is the
    squared point-to-ray distance, and the gradient through this basis is exact.

    Returns residuals [F, 2N] (all b1 rows, then all b2 rows) and the Jacobian
    [F, 2N, 6 + len(free)]. Columns: rotation increment w (R <- R exp(w)), translation increment
    in camera axes (t <- t + R dt), then the free intrinsics as (log fx, log fy, cx / fx, cy / fy)
    increments.
    """
    cam_points, rays, ray_sq, depth, _ = geometry
    across_x = torch.stack((torch.ones_like(depth[..., 0]), torch.zeros_like(depth[..., 0]), -rays[..., 0]), dim=-1)
    first = across_x / length(across_x)[..., None]
    second = torch.linalg.cross(rays / ray_sq.sqrt(), first)
    residuals, rows = [], []
    for basis in (first, second):
        # d(b . Y)/dw = b x Y, d(b . Y)/dt = -b; d(b . Y)/dr_j = -d b_j since b is across r.
        columns = [torch.linalg.cross(basis, cam_points), -basis]
        for index in problem.free:
            axis = index % 2
            scale = depth[..., 0] * (rays[..., axis] if index < 2 else 1.0)
            columns.append((scale * basis[..., axis])[..., None])
        residuals.append(dot(basis, cam_points))
        rows.append(torch.cat(columns, dim=-1))
    return torch.cat(residuals, dim=1), torch.cat(rows, dim=1)


def _solve_step(hessian: torch.Tensor, gradient: torch.Tensor, damping: float, shared: bool,
                num_intrinsics: int) -> torch.Tensor:
    """Damped Gauss-Newton step for per-frame normal equations.

    hessian: [F, P, P], gradient: [F, P] with P = 6 + num_intrinsics. With shared intrinsics
    their rows/columns are summed over frames and eliminated by a Schur complement.
    Returns the step [F, P] (the intrinsic part equal across frames when shared).
    """
    diagonal = hessian.diagonal(dim1=-2, dim2=-1)
    floor = 1e-12 * diagonal.amax().clamp(min=1e-300)
    if not shared or num_intrinsics == 0:
        damped = hessian + torch.diag_embed(damping * diagonal + floor)
        return torch.linalg.solve(damped, -gradient)
    pose, intr = slice(0, 6), slice(6, None)
    h_pp = hessian[:, pose, pose] + torch.diag_embed(damping * diagonal[:, pose] + floor)
    h_pk = hessian[:, pose, intr]
    h_kk = hessian[:, intr, intr].sum(0)
    h_kk = h_kk + torch.diag_embed(damping * h_kk.diagonal() + floor)
    g_p, g_k = gradient[:, pose], gradient[:, intr].sum(0)
    solved = torch.linalg.solve(h_pp, torch.cat((h_pk, g_p[..., None]), dim=-1))  # [F, 6, k + 1]
    schur = h_kk - (h_pk.transpose(1, 2) @ solved[..., :-1]).sum(0)
    rhs = -g_k + (h_pk.transpose(1, 2) @ solved[..., -1:]).sum(0)[:, 0]
    step_k = torch.linalg.solve(schur, rhs)
    step_p = -solved[..., -1] - (solved[..., :-1] @ step_k)
    return torch.cat((step_p, step_k.expand(len(step_p), -1)), dim=-1)


def _apply_step(state: State, step: torch.Tensor, free: tuple[int, ...]) -> State:
    """Move the state by a step [F, 6 + len(free)] in the Jacobian's parametrisation."""
    rotation = state.rotation @ axis_angle_to_rotation_matrix(step[:, :3])
    translation = state.translation + (state.rotation @ step[:, 3:6, None])[..., 0]
    intrinsics = state.intrinsics.clone()
    for column, index in enumerate(free, start=6):
        focal = state.intrinsics[:, index % 2]
        intrinsics[:, index] = focal * torch.exp(step[:, column]) if index < 2 else \
            state.intrinsics[:, index] + focal * step[:, column]
    return State(rotation, translation, intrinsics)


def levenberg_marquardt(problem: Problem, state: State, iterations: int,
                         callback: Callable[[int, float], None] | None = None) -> tuple[State, int]:
    """Robust Levenberg-Marquardt (IRLS weights refreshed each iteration). Returns (state, iterations run).

    ``callback(iteration, robust_cost)`` runs after each accepted step.
    """
    damping = 1e-4
    geometry = ray_geometry(problem, state)
    for iteration in range(iterations):
        residual, jacobian = _jacobian(problem, geometry)
        distances = torch.hypot(*residual.reshape(len(residual), 2, -1).unbind(1))
        median = median_distance(distances, problem)
        if bool((median <= problem.precision).all()):
            logger.debug("post-optimization: exact fit (to the XYZ's precision) after %d iterations.", iteration)
            return state, iteration
        width = robust_width(median, problem)
        weights = problem.weights * robust_weights(distances, problem, width)
        cost = robust_cost(distances, width, problem)
        weighted = jacobian * weights.repeat(1, 2)[..., None]
        hessian = weighted.transpose(1, 2) @ jacobian
        gradient = (weighted.transpose(1, 2) @ residual[..., None])[..., 0]
        for _ in range(_MAX_DAMPING_TRIES):
            step = _solve_step(hessian, gradient, damping, problem.shared, len(problem.free))
            candidate = _apply_step(state, step, problem.free)
            candidate_geometry = ray_geometry(problem, candidate)
            candidate_cost = robust_cost(length(candidate_geometry.residual), width, problem)
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
