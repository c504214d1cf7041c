"""Flow-matching schedulers for the 4DNeX sampler (diffusers' own classes, Wan's settings).

Wan2.1 image-to-video samples rectified flow (x_t = (1 - t) x_0 + t noise, the model predicts
the velocity) with UniPC on shifted flow sigmas; 480p uses ``flow_shift`` 3.0. Euler on the same
shifted sigmas is the simple alternative.
"""

from __future__ import annotations

from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

DEFAULT_FLOW_SHIFT = 3.0  # Wan2.1 I2V 480P
SAMPLERS = ("unipc", "euler")


def make_scheduler(sampler: str = "unipc", flow_shift: float = DEFAULT_FLOW_SHIFT) -> SchedulerMixin:
    """A fresh scheduler by name ("unipc" or "euler") with Wan's flow shift."""
    if flow_shift <= 0:
        raise ValueError(f"flow_shift must be positive, got {flow_shift}; Wan2.1 480p uses 3.0, 720p 5.0.")
    if sampler == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=1000,
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
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=flow_shift)
    raise ValueError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
