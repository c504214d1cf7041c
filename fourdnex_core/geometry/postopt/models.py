"""Which camera model the data supports: the default (one K, principal point at the image centre)
or one with more freedom (a fitted principal point, a focal that changes over the frames).

The default model is fitted first. Each freedom left to the data is then tried on top of it, on
a subset of the samples, starting from the fitted cameras and against the model without it
refitted to the same subset with the same effort; the one that lowers the robust cost
most is kept when the data clearly supports it, and the others are tried again on top of it
(forward selection). A freedom is supported when it lowers the robust cost (at the fitted
model's loss widths) by at least ``MIN_DECREASE`` of it, and when the decrease is far beyond what
fitting noise with that many more parameters gives (the Bayesian information criterion: twice
the decrease, in units of the residual variance, above ``k log n`` for ``k`` more parameters and
``n`` residuals), and when it changes the intrinsics enough to matter: the principal point moves
by ``MIN_PRINCIPAL_POINT_SHIFT`` pixels or more, the focal over the frames by ``MIN_ZOOM_RANGE``
or more (a smaller jitter of the focal is a misfit absorbed, not a zoom). Noise-free data that
the default model already fits exactly keeps it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import torch

from fourdnex_core.geometry.postopt.problem import Problem, State, ray_geometry
from fourdnex_core.geometry.postopt.refine import levenberg_marquardt
from fourdnex_core.geometry.postopt.robust import RAYLEIGH_MEDIAN, median_distance, robust_cost, robust_width

logger = logging.getLogger(__name__)

MIN_DECREASE = 5e-4  # a freedom must lower the robust cost by at least this share of it
MIN_PRINCIPAL_POINT_SHIFT = 0.5  # pixels: a fitted principal point must move at least this far from the centre
MIN_ZOOM_RANGE = 0.02  # a zoom must change the focal by at least 2 % over the frames
_TRIAL_POINTS_PER_FRAME = 1024  # samples per frame for trying a freedom
_TRIAL_ITERATIONS = 10

PRINCIPAL_POINT = "principal point"
ZOOM = "zoom"

CAMERA_MODEL_CHOICES = {  # a name for each (fix_principal_point, zoom) pair of post_optimize
    "auto": (None, None),
    "principal point at the centre, one focal": (True, False),
    "fitted principal point, one focal": (False, False),
    "principal point at the centre, zoom": (True, True),
    "fitted principal point, zoom": (False, True),
}


@dataclasses.dataclass(frozen=True)
class CameraModel:
    """The intrinsics a post-optimization fitted.

    principal_point: ``"image centre"`` (kept there) or ``"fitted"``.
    focal: ``"shared"`` (one fx, fy for all frames), ``"zoom"`` (shared fx / fy ratio, a focal
        per frame), ``"per frame"`` (each frame its own intrinsics, as asked) or ``"known"``.
    from_data: the freedoms the data chose (a subset of ``("principal point", "zoom")``).
    evidence: for each freedom tried, the share of the robust cost it removed.
    """

    principal_point: str
    focal: str
    from_data: tuple[str, ...] = ()
    evidence: dict[str, float] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        focal = {"shared": "fx, fy shared by all frames", "zoom": "a focal per frame (zoom), fx / fy shared",
                 "per frame": "intrinsics per frame", "known": "focal known"}[self.focal]
        centre = "at the image centre" if self.principal_point == "image centre" else "fitted"
        text = f"{focal}; principal point {centre}"
        if self.evidence:
            tried = ", ".join(f"{name} {100 * value:.2g} %" for name, value in self.evidence.items())
            chosen = " and ".join(self.from_data) if self.from_data else "none"
            text += f" (freed from the data: {chosen}; cost removed when tried: {tried})"
        return text


def select_model(problem: Problem, state: State, candidates: tuple[str, ...], iterations: int,
                 callback: Callable[[int, float], None] | None = None) -> tuple[Problem, State, int, tuple[str, ...],
                                                                                dict[str, float]]:
    """Fit ``problem`` from ``state``, then free the ``candidates`` the data supports.

    Returns (the problem with the chosen freedoms, its fitted state, iterations run over its fits,
    the freedoms chosen, the cost share each tried freedom removed). ``callback`` counts on over
    the fits (trials on the subset do not call it).
    """
    done = 0

    def counted(iteration: int, cost: float) -> None:  # one count over every fit of the chosen problem
        callback(done + iteration, cost)

    state, done = levenberg_marquardt(problem, state, iterations, counted if callback else None)
    chosen, evidence = (), {}
    remaining = list(candidates)
    while remaining and not _exact(problem, state):
        trial = problem.head(_TRIAL_POINTS_PER_FRAME)
        base, _ = levenberg_marquardt(trial, state, _TRIAL_ITERATIONS)  # the same subset and effort as each trial
        trials = {name: _try(trial, base, name) for name in remaining}
        evidence.update({name: decrease for name, (decrease, _, _) in trials.items()})
        supported = {name: result for name, result in trials.items() if result[1]}
        if not supported:
            break
        name = max(supported, key=lambda key: supported[key][0])
        logger.info("post-optimization: the data supports a camera with a free %s (%.2g %% lower cost).", name,
                    100 * supported[name][0])
        problem, state = _freed(problem, name), supported[name][2]
        chosen = (*chosen, name)
        remaining.remove(name)
        state, more = levenberg_marquardt(problem, state, iterations, counted if callback else None)
        done += more
    return problem, state, done, chosen, evidence


def _try(before: Problem, state: State, name: str) -> tuple[float, bool, State]:
    """Fit the model with one more freedom from ``state`` (the model without it, fitted to the
    same samples). Returns (the share of the robust cost it removed, whether the data supports
    it, the fitted state)."""
    after = _freed(before, name)
    distances = ray_geometry(before, state).distances()
    median = median_distance(distances, before)
    width = robust_width(median, before)
    cost = float(robust_cost(distances, width, before))
    fitted, _ = levenberg_marquardt(after, state, _TRIAL_ITERATIONS)
    decrease = cost - float(robust_cost(ray_geometry(after, fitted).distances(), width, after))
    variance = float((median / RAYLEIGH_MEDIAN).square().mean())
    extra = len(after.frame_columns) * len(after.weights) + len(after.shared_columns) - \
        len(before.frame_columns) * len(before.weights) - len(before.shared_columns)
    residuals = 2 * int((before.weights > 0).sum())
    share = decrease / cost if cost > 0 else 0.0
    supported = share >= MIN_DECREASE and 2 * decrease / max(variance, 1e-300) > extra * math.log(residuals) and \
        _matters(state, fitted, name) and plausible_focal_change(state, fitted)
    return share, supported, fitted


MAX_FOCAL_CHANGE = 100.0
"""A freedom whose fit moves any focal by more than this factor (up or down) is not supported: on XYZ
that is no view of a scene (random weights) a zoom can otherwise run to 1e-40 / 1e260 pixels."""


def plausible_focal_change(before: State, after: State) -> bool:
    """Whether every focal of ``after`` (intrinsics [F, 4]) is finite and within :data:`MAX_FOCAL_CHANGE`
    of the same frame's focal in ``before``."""
    ratio = after.intrinsics[:, :2] / before.intrinsics[:, :2]
    return bool(torch.isfinite(after.intrinsics).all() and (ratio > 1 / MAX_FOCAL_CHANGE).all()
                and (ratio < MAX_FOCAL_CHANGE).all())


def _matters(before: State, after: State, name: str) -> bool:
    """Whether a freedom changed the intrinsics [F, 4] by a meaningful amount."""
    if name == PRINCIPAL_POINT:
        shift = (after.intrinsics[:, 2:] - before.intrinsics[:, 2:]).norm(dim=-1)
        return bool(shift.max() >= MIN_PRINCIPAL_POINT_SHIFT)
    focal = after.intrinsics[:, 0]
    return bool(focal.max() / focal.min() - 1 >= MIN_ZOOM_RANGE)


def _freed(problem: Problem, name: str) -> Problem:
    """``problem`` with one more freedom."""
    if name == PRINCIPAL_POINT:
        return dataclasses.replace(problem, free=(*problem.free, 2, 3))
    return dataclasses.replace(problem, zoom=True)


def _exact(problem: Problem, state: State) -> bool:
    """Whether every frame is fitted to the XYZ's precision (nothing left for a freedom to explain)."""
    median = median_distance(ray_geometry(problem, state).distances(), problem)
    return bool((median <= problem.precision).all())
