"""Robust (Cauchy or Huber) weights and costs, scaled per frame by the median point-to-ray distance."""

from __future__ import annotations

import torch

from fourdnex_core.geometry.postopt.problem import Problem

ROBUST_WIDTH = {"cauchy": 2.385, "huber": 1.345, "none": float("inf")}
RAYLEIGH_MEDIAN = 1.1774  # median of the norm of a 2D unit Gaussian: distance median -> sigma


def robust_weights(distances: torch.Tensor, problem: Problem, width: torch.Tensor | None = None) -> torch.Tensor:
    """IRLS weights [F, N] for distances [F, N]; the loss width [F, 1] defaults to the median-based one."""
    if problem.robust == "none":
        return torch.ones_like(distances)
    if width is None:
        width = robust_width(median_distance(distances, problem), problem)
    ratio = distances / width
    if problem.robust == "cauchy":
        return 1.0 / (1.0 + ratio**2)
    return torch.where(ratio <= 1.0, 1.0, 1.0 / ratio.clamp(min=1.0))


def median_distance(distances: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Median over each frame's sampled points. distances: [F, N]. Returns [F, 1]."""
    return torch.where(problem.weights > 0, distances, torch.nan).nanmedian(dim=1, keepdim=True).values


def robust_width(median: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Per-frame loss width [F, 1]: the robust constant times a sigma from the median distance [F, 1]."""
    return (ROBUST_WIDTH[problem.robust] * median / RAYLEIGH_MEDIAN).clamp(min=problem.precision)


def robust_cost(distances: torch.Tensor, width: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Total robust loss of distances [F, N] for fixed widths [F, 1]. Returns a scalar."""
    if problem.robust == "none":
        rho = 0.5 * distances**2
    elif problem.robust == "cauchy":
        rho = 0.5 * width**2 * torch.log1p((distances / width) ** 2)
    else:
        rho = torch.where(distances <= width, 0.5 * distances**2, width * (distances - 0.5 * width))
    return (problem.weights * rho).sum()
