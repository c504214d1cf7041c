"""Apply :class:`~fourdnex_core.lora.formats.LoraLayer` lists to a model, fused or unfused.

Both ways compute, for a Linear with weight W [out, in] and input x [..., in]::

    y = x @ W.T + b + strength * alpha / r * (x @ down.T) @ up.T

* :func:`fuse_lora` adds ``strength * alpha / r * up @ down`` to W (in float32, cast back to W's
  dtype): no cost per step. :meth:`FusedLora.remove` subtracts the same update again, which
  restores W to within one rounding step of its dtype; with ``keep_original=True`` it copies the
  original weights back instead (exact, at the cost of a CPU copy of every targeted weight).
  8-bit (fp8) weights are refused: their 3 mantissa bits would round most of the update away.
* :func:`attach_lora` leaves W alone and adds the low-rank term with a forward hook on each
  Linear: the weights (and ``state_dict``) stay untouched and :meth:`AttachedLora.remove` takes
  the hooks off. This is the way for fp8 models.

Every layer is checked against the model (module exists and is an ``nn.Linear``; down is
[r, in_features], up is [out_features, r]) before anything changes, so a bad LoRA leaves the
model as it was.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from fourdnex_core.lora.formats import LoraLayer, linear_module_names, unmatched_modules_error

logger = logging.getLogger(__name__)


def bind_lora(model: nn.Module, layers: Sequence[LoraLayer]) -> list[tuple[nn.Linear, LoraLayer]]:
    """Pair every layer with its ``nn.Linear`` in ``model``, checking names and shapes.

    Raises ``ValueError`` for modules that are not Linear layers of the model, and for factors
    whose shapes do not fit (down [r, in_features], up [out_features, r]).
    """
    modules = dict(model.named_modules())
    unmatched = [layer.module for layer in layers if not isinstance(modules.get(layer.module), nn.Linear)]
    if unmatched:
        raise unmatched_modules_error(unmatched, linear_module_names(model))
    bound = []
    for layer in layers:
        linear = modules[layer.module]
        expected_down = (layer.rank, linear.in_features)
        expected_up = (linear.out_features, layer.rank)
        if tuple(layer.down.shape) != expected_down or tuple(layer.up.shape) != expected_up:
            raise ValueError(
                f"LoRA for {layer.module}: down {tuple(layer.down.shape)} / up {tuple(layer.up.shape)} do not fit the "
                f"Linear {linear.in_features} -> {linear.out_features} (expected down {expected_down}, up "
                f"{expected_up}). The LoRA was made for a model of another size (e.g. Wan 14B vs 1.3B); load a "
                "LoRA for this model."
            )
        bound.append((linear, layer))
    return bound


def _check_strength(strength: float) -> float:
    strength = float(strength)
    if not math.isfinite(strength):
        raise ValueError(f"LoRA strength must be a finite number, got {strength}. Use e.g. 1.0 (the training scale).")
    return strength


@torch.no_grad()
def _add_update(linear: nn.Linear, layer: LoraLayer, scale: float) -> None:
    """W += scale * up @ down, computed in float32 on W's device."""
    weight = linear.weight
    up = layer.up.to(weight.device, torch.float32)
    down = layer.down.to(weight.device, torch.float32)
    weight.copy_(torch.addmm(weight.float(), up, down, alpha=scale).to(weight.dtype))


def _eight_bit(bound: list[tuple[nn.Linear, LoraLayer]]) -> list[str]:
    return [layer.module for linear, layer in bound if linear.weight.dtype.itemsize == 1]


def eight_bit_targets(model: nn.Module, layers: Sequence[LoraLayer]) -> list[str]:
    """Module paths of the Linears targeted by ``layers`` whose weights are 8-bit (fp8): these
    take the LoRA only unfused (:func:`attach_lora`)."""
    return _eight_bit(bind_lora(model, layers))


def _refuse_8bit(bound: list[tuple[nn.Linear, LoraLayer]]) -> None:
    eight_bit = _eight_bit(bound)
    if eight_bit:
        raise ValueError(
            f"{len(eight_bit)} targeted weights are 8-bit ({eight_bit[0]}, ...): fusing would round most of the LoRA "
            "away. Use attach_lora (unfused) for fp8 models, or load the transformer in bf16."
        )


class FusedLora:
    """A LoRA fused into a model's weights; :meth:`remove` unfuses it."""

    def __init__(
        self,
        bound: list[tuple[nn.Linear, LoraLayer]],
        strength: float,
        originals: list[torch.Tensor] | None = None,
    ):
        self._bound = bound
        self.strength = strength
        self._originals = originals
        self._fused = True

    @property
    def modules(self) -> list[str]:
        """Module paths whose weights carry this LoRA."""
        return [layer.module for _, layer in self._bound]

    @torch.no_grad()
    def remove(self) -> None:
        """Unfuse: copy the kept originals back, or subtract the update (one rounding step off)."""
        if not self._fused:
            raise RuntimeError("This LoRA was already unfused; unfusing twice would corrupt the weights.")
        if self._originals is not None:
            for (linear, _), original in zip(self._bound, self._originals):
                linear.weight.copy_(original)
        else:
            for linear, layer in self._bound:
                _add_update(linear, layer, -layer.scale(self.strength))
        self._fused = False
        logger.debug("Unfused LoRA from %d Linear layers.", len(self._bound))


def fuse_lora(
    model: nn.Module,
    layers: Sequence[LoraLayer],
    strength: float = 1.0,
    *,
    keep_original: bool = False,
) -> FusedLora:
    """Add ``strength * alpha / r * up @ down`` to the weight of every targeted Linear.

    Args:
        model: the transformer (modified in place).
        layers: the LoRA, e.g. ``read_lora(path, model).layers``.
        strength: 1.0 = the LoRA's training scale alpha / r (for the 4DNeX release: the release's
            own fuse at lora_scale 0.5); 0 = no effect; negative values subtract.
        keep_original: keep a CPU copy of every targeted weight so that unfusing is exact. Worth it
            for bf16/fp16 models fused and unfused many times (rounding errors add up otherwise).

    Returns a :class:`FusedLora` whose ``remove()`` unfuses.
    """
    strength = _check_strength(strength)
    bound = bind_lora(model, layers)
    _refuse_8bit(bound)
    originals = [linear.weight.detach().to("cpu", copy=True) for linear, _ in bound] if keep_original else None
    for linear, layer in bound:
        _add_update(linear, layer, layer.scale(strength))
    logger.info("Fused LoRA into %d Linear layers at strength %g.", len(bound), strength)
    return FusedLora(bound, strength, originals)


class _LowRankHook:
    """Forward hook adding ``scale * up(down(x))`` to a Linear's output [..., out].

    The low-rank term is computed in the input's dtype (the factors are converted once and
    cached) and added in the output's dtype, which layers that compute in another dtype than
    their input (fp8 layers) keep.
    """

    def __init__(self, layer: LoraLayer, scale: float):
        self.down = layer.down
        self.up = layer.up
        self.scale = scale

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if self.down.device != x.device or self.down.dtype != x.dtype:
            self.down = self.down.to(x.device, x.dtype)
            self.up = self.up.to(x.device, x.dtype)
        return output + (self.scale * F.linear(F.linear(x, self.down), self.up)).to(output.dtype)


class AttachedLora:
    """A LoRA attached to a model by forward hooks; :meth:`remove` detaches it."""

    def __init__(self, handles: list[RemovableHandle], modules: list[str], strength: float):
        self._handles = handles
        self.modules = modules
        self.strength = strength

    def remove(self) -> None:
        """Take the hooks off; the model computes exactly what it did before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def attach_lora(model: nn.Module, layers: Sequence[LoraLayer], strength: float = 1.0) -> AttachedLora:
    """Add the LoRA's low-rank term to every targeted Linear at run time (weights untouched).

    Same arguments and meaning of ``strength`` as :func:`fuse_lora`; returns an
    :class:`AttachedLora` whose ``remove()`` detaches it.
    """
    strength = _check_strength(strength)
    bound = bind_lora(model, layers)
    handles = [linear.register_forward_hook(_LowRankHook(layer, layer.scale(strength))) for linear, layer in bound]
    logger.info("Attached LoRA to %d Linear layers at strength %g.", len(bound), strength)
    return AttachedLora(handles, [layer.module for _, layer in bound], strength)
