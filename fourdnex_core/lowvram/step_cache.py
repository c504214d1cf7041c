"""Step caching (TeaCache-style): skip transformer evaluations whose input barely changed.

Between neighbouring denoising steps the transformer's blocks often add nearly the same residual
to their input. :class:`StepCache` wraps the transformer (same call signature, so the sampler
does not know) and, at every step, measures how much the *timestep-modulated input of block 0*

    m_t = norm1(h_t) * (1 + scale_t) + shift_t          [B, L, D]

(h_t: the patch-embedded tokens, scale/shift from the timestep embedding) changed since the
previous step, as a relative L1 distance ``mean|m_t - m_{t-1}| / mean|m_{t-1}|``. The distances
are summed over the steps since the last full evaluation; while the sum stays below
``threshold`` the blocks are skipped and the last residual (blocks' output minus input) is added
to the new input instead. The first ``warmup_steps`` and the last step are always computed;
``max_consecutive_skips`` bounds runs of skips (as MagCache does).

The embedding, head and unpatchify still run every time; only the blocks are skipped. Classifier-free
guidance calls the transformer several times at one timestep (positive, then negative prompt):
those calls are *streams*, each with its own residual; the skip decision is taken once per step
(m_t depends on the latent and the timestep only, not on the prompt).

How the skip happens: for the duration of one call the wrapper puts a stand-in in place of
``transformer.blocks`` that runs the real blocks (their hooks included: block swap, compile) or
reuses the residual; the transformer is back to normal when the call returns.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .block_swap import transformer_blocks

logger = logging.getLogger(__name__)


def wan_modulated_input(block: nn.Module, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """The input of a Wan block's self-attention: ``norm1(h) * (1 + scale) + shift`` in float32.

    Args:
        block: a Wan transformer block (has ``norm1`` and ``scale_shift_table`` [1, 6, D]).
        hidden_states: [B, L, D] tokens entering the block.
        temb: [B, 6, D] timestep projection (or [B, L, 6, D] for per-token timesteps).
    Returns:
        [B, L, D] float32.
    """
    table, norm = getattr(block, "scale_shift_table", None), getattr(block, "norm1", None)
    if table is None or norm is None:
        raise TypeError(f"{type(block).__name__} is not a Wan transformer block (no norm1 / scale_shift_table); "
                        "step caching needs a Wan-style transformer.")
    if temb.ndim == 4:
        shift, scale = (table.unsqueeze(0) + temb.float()).chunk(6, dim=2)[:2]
        shift, scale = shift.squeeze(2), scale.squeeze(2)
    else:
        shift, scale = (table + temb.float()).chunk(6, dim=1)[:2]
    return norm(hidden_states.float()) * (1 + scale) + shift


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """``mean|current - previous| / mean|previous|`` (inf when ``previous`` is all zeros)."""
    denominator = previous.float().abs().mean().item()
    numerator = (current.float() - previous.float()).abs().mean().item()
    return numerator / denominator if denominator > 0 else math.inf


@dataclasses.dataclass
class StepCacheStats:
    """One sampling run: which steps ran the blocks and which reused the cached residual."""

    num_steps: int
    computed: list[int] = dataclasses.field(default_factory=list)
    skipped: list[int] = dataclasses.field(default_factory=list)
    distances: list[float] = dataclasses.field(default_factory=list)

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)


class _BlocksStandIn(nn.Module):
    """Occupies ``transformer.blocks`` during one call; forwards the block inputs to ``run``."""

    def __init__(self, run: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.run = run

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb):  # noqa: D102 (block signature)
        return self.run(hidden_states, encoder_hidden_states, temb, rotary_emb)


class StepCache(nn.Module):
    """A transformer wrapper that skips the blocks on steps whose input changed little.

    Args:
        transformer: a Wan-style transformer (``blocks`` run in order; block 0 has ``norm1`` and
            ``scale_shift_table``).
        num_inference_steps: steps of the sampling run (the last one is always computed).
        threshold: accumulated relative L1 change below which a step is skipped; 0 never skips.
            TeaCache's Wan settings are 0.1-0.3 (higher: faster, further from the plain output).
        warmup_steps: leading steps always computed (at least 1: there is no residual before).
        max_consecutive_skips: at most this many skipped steps in a row (None: unbounded).
        rescale: optional polynomial coefficients (highest power first) mapping the raw distance to
            the accumulated one, as TeaCache's per-model fits do; None uses the raw distance.

    Calls take and return what the transformer's forward does. A new run starts when the timestep
    goes up (a fresh schedule) or after :meth:`reset`; :attr:`stats` describes the current or last run.
    """

    def __init__(
        self,
        transformer: nn.Module,
        num_inference_steps: int,
        *,
        threshold: float = 0.1,
        warmup_steps: int = 1,
        max_consecutive_skips: int | None = None,
        rescale: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}.")
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0 (0 disables skipping), got {threshold}.")
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be at least 1 (the first step has no residual), got {warmup_steps}.")
        if max_consecutive_skips is not None and max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1 or None, got {max_consecutive_skips}.")
        transformer_blocks(transformer)
        self.transformer = transformer
        self.num_inference_steps = num_inference_steps
        self.threshold = threshold
        self.warmup_steps = warmup_steps
        self.max_consecutive_skips = max_consecutive_skips
        self.rescale = tuple(rescale) if rescale is not None else None
        self.reset()

    @property
    def dtype(self) -> torch.dtype:
        """The wrapped transformer's dtype (the pipeline reads it)."""
        return self.transformer.dtype

    @property
    def config(self):
        return self.transformer.config

    def reset(self) -> None:
        """Forget the cached state; the next call starts a new run."""
        self.stats = StepCacheStats(self.num_inference_steps)
        self._step = -1
        self._stream = 0
        self._last_timestep: float | None = None
        self._previous: torch.Tensor | None = None
        self._accumulated = 0.0
        self._consecutive_skips = 0
        self._compute_step = True
        self._residuals: dict[int, torch.Tensor] = {}

    # -- step bookkeeping ----------------------------------------------------------------------

    def _advance(self, timestep: torch.Tensor) -> None:
        """Count steps by timestep: a new value starts a step, a repeated one is another stream."""
        value = float(timestep.reshape(-1)[0])
        if self._last_timestep is not None and value == self._last_timestep:
            self._stream += 1
            return
        if self._last_timestep is not None and value > self._last_timestep:
            self.reset()
        if self._step + 1 >= self.num_inference_steps:
            raise ValueError(
                f"StepCache was made for {self.num_inference_steps} steps but the sampler ran more; pass "
                "num_inference_steps=settings.num_inference_steps (or call reset() between runs)."
            )
        self._step += 1
        self._stream = 0
        self._last_timestep = value

    def _decide(self, block: nn.Module, hidden_states: torch.Tensor, temb: torch.Tensor) -> bool:
        """Whether this step runs the blocks (True) or reuses the residuals (False)."""
        modulated = wan_modulated_input(block, hidden_states, temb).to(hidden_states.dtype)
        distance = math.inf if self._previous is None else relative_l1(modulated, self._previous)
        self._previous = modulated
        if self.rescale is not None and math.isfinite(distance):
            distance = sum(c * distance**p for p, c in enumerate(reversed(self.rescale)))
        self.stats.distances.append(distance)
        last = self._step == self.num_inference_steps - 1
        forced = self._step < self.warmup_steps or last or (
            self.max_consecutive_skips is not None and self._consecutive_skips >= self.max_consecutive_skips)
        self._accumulated += distance
        compute = forced or self._accumulated >= self.threshold
        if compute:
            self._accumulated = 0.0
            self._consecutive_skips = 0
            self.stats.computed.append(self._step)
        else:
            self._consecutive_skips += 1
            self.stats.skipped.append(self._step)
        if last:
            logger.info("Step cache (threshold %g): skipped %d of %d steps.", self.threshold,
                        self.stats.skipped_count, self.num_inference_steps)
        return compute

    # -- the call ------------------------------------------------------------------------------

    def _run_blocks(self, blocks: nn.ModuleList, hidden_states, encoder_hidden_states, temb, rotary_emb):
        if self._stream == 0:
            self._compute_step = self._decide(blocks[0], hidden_states, temb)
        residual = self._residuals.get(self._stream)
        if not self._compute_step and residual is not None and residual.shape == hidden_states.shape:
            return hidden_states + residual
        output = hidden_states
        for block in blocks:
            output = block(output, encoder_hidden_states, temb, rotary_emb)
        self._residuals[self._stream] = output - hidden_states
        return output

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, *args, **kwargs):
        """The transformer's forward (hidden_states [B, C, F, H, W], timestep [B], ...), blocks maybe skipped."""
        self._advance(timestep)
        blocks = self.transformer.blocks
        stand_in = _BlocksStandIn(lambda *inputs: self._run_blocks(blocks, *inputs))
        self.transformer.blocks = nn.ModuleList([stand_in])
        try:
            return self.transformer(hidden_states, timestep, *args, **kwargs)
        finally:
            self.transformer.blocks = blocks
