"""Flow-matching schedules and schedulers for the 4DNeX sampler.

Wan2.1 image-to-video samples rectified flow (x_t = (1 - t) x_0 + t noise, the model predicts
the velocity) with UniPC on shifted flow sigmas; 480p uses ``flow_shift`` 3.0. Euler on the same
shifted sigmas is the simple alternative.

The sigmas and the model timesteps are computed here, not by diffusers, so they do not move with
the installed diffusers version. Two schedules, by name:

- ``"release"`` (default): what the 4DNeX release ran (diffusers 0.34's UniPC flow sigmas):
  ``flip(shift(1 - linspace(1, 1/1000, n + 1)))[:-1]``, first sigma shift(0.999) (0.999666 at shift 3);
- ``"diffusers"``: what diffusers >= 0.37 builds: ``shift(linspace(1, 1/1000, n + 1)[:-1])``, its
  first sigma 1 lowered by 1e-6 (0.999999).

diffusers' scheduler classes still do the stepping (UniPC's multistep update, Euler's step); they
are handed our sigmas and timesteps.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

DEFAULT_FLOW_SHIFT = 3.0  # Wan2.1 I2V 480P
SAMPLERS = ("unipc", "euler")
SCHEDULES = ("release", "diffusers")
NUM_TRAIN_TIMESTEPS = 1000


def _check(num_steps: int, shift: float, schedule: str) -> None:
    if num_steps < 1:
        raise ValueError(f"The schedule needs at least 1 step, got {num_steps}.")
    if shift <= 0:
        raise ValueError(f"flow_shift must be positive, got {shift}; Wan2.1 480p uses 3.0, 720p 5.0.")
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)} "
                         "(\"release\" is what the 4DNeX release ran).")


def _shift(sigmas: np.ndarray, shift: float) -> np.ndarray:
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def _step_sigmas64(num_steps: int, shift: float, schedule: str) -> np.ndarray:
    """The ``num_steps`` sigmas the model is called at, float64, descending (no terminal 0)."""
    _check(num_steps, shift, schedule)
    grid = np.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, num_steps + 1)
    if schedule == "release":
        return np.flip(_shift(1.0 - grid, shift))[:-1].copy()
    sigmas = _shift(grid[:-1], shift)
    if abs(sigmas[0] - 1.0) < 1e-6:
        sigmas[0] -= 1e-6  # diffusers keeps UniPC's log(alpha) finite this way
    return sigmas


def flow_sigmas(num_steps: int, shift: float = DEFAULT_FLOW_SHIFT, schedule: str = "release") -> torch.Tensor:
    """The shifted flow sigmas of ``schedule`` for ``num_steps`` steps.

    Returns:
        float32 [num_steps + 1], descending, the last entry 0.0 (the clean sample).
    """
    sigmas = _step_sigmas64(num_steps, shift, schedule)
    return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))


def flow_timesteps(num_steps: int, shift: float = DEFAULT_FLOW_SHIFT, schedule: str = "release",
                   sampler: str = "unipc") -> torch.Tensor:
    """The timesteps the transformer is given, one per step: [num_steps].

    UniPC gets int64 truncations of sigma * 1000 (computed in float64, as diffusers does); Euler gets
    float32 sigma * 1000 (as diffusers' FlowMatchEuler does on custom sigmas).
    """
    if sampler == "unipc":
        return torch.from_numpy(_step_sigmas64(num_steps, shift, schedule) * NUM_TRAIN_TIMESTEPS).to(torch.int64)
    if sampler == "euler":
        return flow_sigmas(num_steps, shift, schedule)[:-1] * NUM_TRAIN_TIMESTEPS
    raise ValueError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")


def make_scheduler(sampler: str = "unipc", flow_shift: float = DEFAULT_FLOW_SHIFT) -> SchedulerMixin:
    """A fresh scheduler by name ("unipc" or "euler") with Wan's flow shift (its own schedule;
    :func:`scheduler_for` sets ours)."""
    if flow_shift <= 0:
        raise ValueError(f"flow_shift must be positive, got {flow_shift}; Wan2.1 480p uses 3.0, 720p 5.0.")
    if sampler == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=flow_shift,
            solver_order=2,
            solver_type="bh2",
            predict_x0=True,
            lower_order_final=True,
            final_sigmas_type="zero",
        )
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=flow_shift)
    raise ValueError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")


def scheduler_for(sampler: str, num_steps: int, flow_shift: float = DEFAULT_FLOW_SHIFT,
                  schedule: str = "release", device: torch.device | str = "cpu") -> SchedulerMixin:
    """A scheduler ready to step through ``schedule``: its sigmas are :func:`flow_sigmas` and its
    timesteps :func:`flow_timesteps` (on ``device``), whatever diffusers would have built."""
    sigmas, timesteps = flow_sigmas(num_steps, flow_shift, schedule), flow_timesteps(num_steps, flow_shift, schedule,
                                                                                     sampler)
    scheduler = make_scheduler(sampler, flow_shift)
    scheduler.set_timesteps(num_steps, device=device)  # resets the stepping state for num_steps
    # UniPC keeps its sigmas on the CPU (diffusers' choice), Euler with the timesteps.
    scheduler.sigmas = sigmas.to(scheduler.sigmas.device)
    scheduler.timesteps = timesteps.to(device)
    return scheduler
