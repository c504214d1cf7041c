"""Gradient checkpointing whose saved block inputs wait in CPU memory (training).

diffusers' gradient checkpointing keeps every block's input on the GPU until the backward pass:
``tokens x 5120 x 2`` bytes per block, 13.4 GiB for the 40 blocks of the 14B at 49 x 480 x 720
(35,100 tokens) — more than the fp8 weights leave free on a 24 GB card.
:func:`offloaded_checkpoint` is a drop-in ``gradient_checkpointing_func`` for
``model.enable_gradient_checkpointing(...)``: each block runs without recording a graph, its
hidden-state input is copied to CPU memory (pinned, asynchronously, when the block runs on CUDA),
and the backward pass copies it back, runs the block again under autograd (with the forward's
autocast state) and back-propagates through it, block by block, last to first.

The recomputation runs the whole block, so block swap's post-hook would fire inside it; the
hooks therefore leave a block recomputed in the backward pass on the device until the next
swapped block starts (:class:`~fourdnex_core.lowvram.BlockSwap`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``tensor`` in new memory: pinned and asynchronous from a GPU (stream-ordered)."""
    if tensor.device.type == "cpu":
        return tensor.detach().clone()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor.detach(), non_blocking=True)


class _OffloadedCheckpoint(torch.autograd.Function):
    """``module(hidden_states, *args)`` keeping only a CPU copy of ``hidden_states`` for the backward pass.

    The block's trainable parameters are inputs too, so autograd knows the output depends on them
    (and the LoRA gets its gradients) even when no activation requires grad.
    """

    @staticmethod
    def forward(ctx, module: nn.Module, arg_count: int, hidden_states: torch.Tensor, *rest: Any) -> torch.Tensor:
        device_type = hidden_states.device.type
        ctx.module, ctx.args, ctx.params, ctx.device = module, rest[:arg_count], rest[arg_count:], hidden_states.device
        ctx.autocast = dict(device_type=device_type, enabled=torch.is_autocast_enabled(device_type),
                            dtype=torch.get_autocast_dtype(device_type))
        ctx.host = _host_copy(hidden_states)
        with torch.no_grad():
            return module(hidden_states, *ctx.args)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        hidden_states = ctx.host.to(ctx.device, non_blocking=True).requires_grad_(True)
        ctx.host = None
        args = [arg.detach().requires_grad_(True) if isinstance(arg, torch.Tensor) and arg.requires_grad else arg
                for arg in ctx.args]
        with torch.enable_grad(), torch.autocast(**ctx.autocast):
            output = ctx.module(hidden_states, *args)
        wanted = [hidden_states, *[a for a in args if isinstance(a, torch.Tensor) and a.requires_grad], *ctx.params]
        grads = iter(torch.autograd.grad(output, wanted, grad_output, allow_unused=True))
        hidden_grad = next(grads)
        arg_grads = [next(grads) if isinstance(a, torch.Tensor) and a.requires_grad else None for a in args]
        return None, None, hidden_grad, *arg_grads, *grads


def offloaded_checkpoint(module: nn.Module, hidden_states: torch.Tensor, *args: Any) -> torch.Tensor:
    """Run ``module(hidden_states, *args)`` checkpointed, its input saved in CPU memory.

    Args:
        module: a transformer block; ``hidden_states`` [B, tokens, width] is its first argument.
        args: the block's other arguments (text states, timestep projection, rotary tables), kept
            where they are; tensors among them that require grad get their gradients too (tensors
            nested in tuples must not require grad).
    Returns:
        The block's output, as ``module(hidden_states, *args)``.
    """
    nested = [t for arg in args if isinstance(arg, (tuple, list)) for t in arg
              if isinstance(t, torch.Tensor) and t.requires_grad]
    if nested:
        raise ValueError("offloaded_checkpoint passes gradients to top-level tensor arguments only; a tensor "
                         "inside a tuple argument requires grad. Use torch.utils.checkpoint for this block.")
    params = [parameter for parameter in module.parameters() if parameter.requires_grad]
    return _OffloadedCheckpoint.apply(module, len(args), hidden_states, *args, *params)
