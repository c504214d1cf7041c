"""The 4DNeX training objective: rectified-flow velocity matching on the wide 6D latent.

With the clean wide latent x_0 (RGB half | XYZ half normalized with mu -0.13, sigma 1.70),
noise x_1 ~ N(0, I) and sigma in (0, 1)::

    x_sigma = (1 - sigma) x_0 + sigma x_1        target velocity v = x_1 - x_0

The transformer sees ``cat([x_sigma, condition])`` (16 + 20 channels, exactly as the sampler
builds it) at timestep ``1000 * sigma`` and the loss is the MSE over the whole wide latent.
This is the convention of diffusers' flow-matching schedulers, which the sampler uses: a step
``x <- x + (sigma_next - sigma) * v`` from sigma = 1 (noise) to 0, so a model trained here
samples correctly with :func:`fourdnex_core.sampler.sample`.

Timestep sampling (``sigma`` before the shift):

* ``uniform``: sigma ~ U(0, 1);
* ``logit_normal``: sigma = sigmoid(n), n ~ N(logit_mean, logit_std) (SD3's choice; favours
  mid-range noise);

then ``flow_shift`` s maps sigma -> s sigma / (1 + (s - 1) sigma) (Wan's shift; 1 = none,
s > 1 favours high noise, as Wan's 480p sampling with s = 3 does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from fourdnex_core.representation import fuse_width, normalize_xyz_latent

NUM_TRAIN_TIMESTEPS = 1000


@dataclasses.dataclass
class Batch:
    """A training batch on one device.

    rgb_latent, xyz_latent: [B, 16, f, h, w] Wan-normalized; condition: [B, 20, f, h, 2w];
    prompt_embeds: [B, 512, text_dim]; image_embeds: [B, 257, image_dim].
    """

    rgb_latent: torch.Tensor
    xyz_latent: torch.Tensor
    condition: torch.Tensor
    prompt_embeds: torch.Tensor
    image_embeds: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(**{key: value.to(device) for key, value in dataclasses.asdict(self).items()})


@dataclasses.dataclass(frozen=True)
class TimestepSampling:
    """How sigma is drawn (see the module docstring)."""

    method: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    flow_shift: float = 1.0


def wide_latent(rgb_latent: torch.Tensor, xyz_latent: torch.Tensor) -> torch.Tensor:
    """The clean training target x_0: [B, 16, f, h, w] x 2 -> [B, 16, f, h, 2w], XYZ half 4DNeX-normalized."""
    return normalize_xyz_latent(fuse_width(rgb_latent.float(), xyz_latent.float()))


def sample_sigmas(batch_size: int, sampling: TimestepSampling, generator: torch.Generator) -> torch.Tensor:
    """Noise levels [B] in (0, 1), drawn on the CPU from ``generator``."""
    if sampling.method == "uniform":
        sigma = torch.rand(batch_size, generator=generator)
    elif sampling.method == "logit_normal":
        sigma = torch.sigmoid(sampling.logit_mean + sampling.logit_std * torch.randn(batch_size, generator=generator))
    else:
        raise ValueError(f"Unknown timestep sampling {sampling.method!r}; use 'uniform' or 'logit_normal'.")
    shift = sampling.flow_shift
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def noisy_latent(clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_sigma = (1 - sigma) x_0 + sigma x_1, with sigma [B] broadcast over [B, C, F, H, W]."""
    sigma = sigma.view(-1, *([1] * (clean.ndim - 1))).to(clean)
    return (1.0 - sigma) * clean + sigma * noise


def flow_matching_loss(
    transformer: Callable[..., tuple[torch.Tensor, ...]],
    batch: Batch,
    sampling: TimestepSampling,
    generator: torch.Generator,
    *,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE between predicted and true velocity over the whole wide latent.

    Noise and sigma are drawn on the CPU from ``generator`` (the same on every device), so a
    step is reproducible from its generator alone. Returns (scalar loss, sigmas [B]).
    """
    clean = wide_latent(batch.rgb_latent, batch.xyz_latent)
    noise = torch.randn(clean.shape, generator=generator).to(clean.device)
    sigma = sample_sigmas(clean.shape[0], sampling, generator).to(clean.device)
    model_input = torch.cat([noisy_latent(clean, noise, sigma), batch.condition.float()], dim=1)
    device_type = clean.device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        prediction = transformer(
            hidden_states=model_input,
            timestep=sigma * NUM_TRAIN_TIMESTEPS,
            encoder_hidden_states=batch.prompt_embeds.float(),
            encoder_hidden_states_image=batch.image_embeds.float(),
            return_dict=False,
        )[0]
    return F.mse_loss(prediction.float(), noise - clean), sigma


def zero_velocity(hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor]:
    """A "model" that predicts zero velocity. Its loss is E|x_1 - x_0|^2 = 1 + E[x_0^2]: the level a
    trained model must get below to have learned the data, not just to cancel its own output."""
    return (torch.zeros_like(hidden_states[:, :16]),)


@torch.no_grad()
def evaluation_loss(
    transformer: Callable[..., tuple[torch.Tensor, ...]],
    batches: Sequence[Batch],
    sampling: TimestepSampling,
    *,
    seed: int = 0,
) -> float:
    """Mean loss over ``batches``, batch k noised from a generator seeded ``seed + k``.

    Every model sees the same noise and sigmas, so the losses of different models (the untrained
    base, :func:`zero_velocity`, a trained LoRA) compare directly.
    """
    losses = [flow_matching_loss(transformer, batch, sampling, torch.Generator().manual_seed(seed + index))[0]
              for index, batch in enumerate(batches)]
    return float(torch.stack(losses).mean())
