"""Block swap: keep some transformer blocks in CPU memory and bring each to the GPU just in time.

A 14B Wan transformer is ~28 GB in bf16 (40 blocks of ~0.7 GB); a 24 GB GPU cannot hold it. With
block swap the first ``blocks_to_swap`` blocks live in (pinned) CPU memory. Forward pre-hooks on
every block:

1. make the block about to run resident on the device: wait for its prefetch (CUDA event) or copy
   it now;
2. start copying the *next* swapped block (in execution order, wrapping around to the next
   forward) on a side CUDA stream, so the copy overlaps this block's compute.

A forward post-hook on each swapped block puts its weights back to the CPU copies (nothing is
copied back: swapped weights are frozen). At most two swapped blocks are on the device at any
time (in a training backward pass, plus the copy a recomputed block's graph holds until its
gradients are done; see below). The hooks only look at ``model.blocks``, so any transformer whose
forward runs its blocks in order (diffusers' Wan and
:class:`~fourdnex_core.transformer.FourDNeXTransformer3DModel`) works unchanged, and so does any
callable wrapper around it (the sampler never knows).

Weights are moved by swapping each tensor's ``.data`` between its CPU copy and a device copy;
module objects, parameters and their other hooks (an attached LoRA, fp8 layers) stay as they are.
For training, ``keep_trainable=True`` swaps only the frozen tensors: a parameter that requires
grad (a LoRA being trained) stays on the device, where its gradient and optimizer state are.

Training (autograd on) needs gradient checkpointing (``model.enable_gradient_checkpointing()``,
non-reentrant, diffusers' default). Without it autograd would keep the swapped weights for the
backward pass, where they are back on the CPU; with it a block keeps nothing of its forward but
its input, and the backward pass runs the block again, through the same hooks, which load the
weights again. The recomputed graph holds its own reference to the device copy, so the weights
going back to the CPU after the recomputation change nothing. In the backward pass a block goes
back when the next swapped block starts, not in its post-hook: a non-reentrant recomputation stops
before the post-hook anyway, and a reentrant one (:func:`~fourdnex_core.lowvram.activation_offload.
offloaded_checkpoint`) runs the block's gradients after it, through the parameters themselves. The
last block to run stays until the next forward, and the block to prefetch is the previous one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

logger = logging.getLogger(__name__)

GIB = 1024**3


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """``model.blocks``: the repeated blocks, in execution order; a clear error when absent."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise TypeError(
            f"{type(model).__name__} has no non-empty `blocks` ModuleList; block swap, step caching and block "
            "compilation need a Wan-style transformer (diffusers' WanTransformer3DModel or FourDNeXTransformer3DModel)."
        )
    return blocks


def module_bytes(module: nn.Module) -> int:
    """Bytes of all parameters and buffers of ``module``."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def resident_weight_bytes(block_bytes: Sequence[int], other_bytes: int, swapped: int, *,
                          prefetch: bool = True) -> int:
    """Weight bytes on the device with the first ``swapped`` blocks swapped: ``other_bytes``
    (everything outside the blocks) + the resident blocks + the swapped blocks in flight (two with
    prefetch: the running one and the next; one without)."""
    in_flight = sorted(block_bytes[:swapped], reverse=True)[: 2 if prefetch else 1]
    return other_bytes + sum(block_bytes[swapped:]) + sum(in_flight)


def model_resident_bytes(model: nn.Module, swapped: int, *, prefetch: bool = True) -> int:
    """:func:`resident_weight_bytes` of a Wan-style ``model`` with its first ``swapped`` blocks swapped."""
    block_bytes = [module_bytes(block) for block in transformer_blocks(model)]
    return resident_weight_bytes(block_bytes, module_bytes(model) - sum(block_bytes), swapped, prefetch=prefetch)


def blocks_to_swap_for_budget(
    block_bytes: Sequence[int], other_bytes: int, budget_bytes: int, *, prefetch: bool = True
) -> int:
    """The fewest leading blocks to swap so that the resident weights (:func:`resident_weight_bytes`)
    fit in ``budget_bytes``.

    Args:
        block_bytes: bytes of each block, in execution order (the first ones are swapped).
        other_bytes: bytes of the non-block weights (embeddings, head).
        budget_bytes: device memory available for weights (free memory minus activations).
    Raises:
        ValueError: when even swapping every block does not fit.
    """
    for swapped in range(len(block_bytes) + 1):
        if resident_weight_bytes(block_bytes, other_bytes, swapped, prefetch=prefetch) <= budget_bytes:
            return swapped
    need = resident_weight_bytes(block_bytes, other_bytes, len(block_bytes), prefetch=prefetch)
    raise ValueError(
        f"Even with every block swapped the transformer needs {need / GIB:.1f} GiB on the device, more than the "
        f"{budget_bytes / GIB:.1f} GiB available; use fp8 weights, a smaller activation reserve, or free GPU memory."
    )


def auto_blocks_to_swap(model: nn.Module, device: torch.device | str, reserve_bytes: int) -> int:
    """Blocks to swap so the model fits the device's free memory minus ``reserve_bytes`` (activations).

    Counts weights already on ``device`` as free (they would move anyway). CPU devices need no swap (0).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    already_there = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]
                        if t.device == device)
    blocks = transformer_blocks(model)
    block_bytes = [module_bytes(block) for block in blocks]
    other = module_bytes(model) - sum(block_bytes)
    count = blocks_to_swap_for_budget(block_bytes, other, free + already_there - reserve_bytes)
    logger.info("Block swap: %d of %d blocks in CPU memory (%.1f GiB free, %.1f GiB kept for activations).",
                count, len(blocks), (free + already_there) / GIB, reserve_bytes / GIB)
    return count


def in_backward_pass() -> bool:
    """Whether this code runs inside autograd's backward pass (a checkpointed block recomputing)."""
    return torch._C._current_graph_task_id() != -1


@dataclasses.dataclass
class _SwappedBlock:
    """One swapped block: its tensors, their CPU copies and where the weights are now.

    ``state``: "host" (weights are the CPU copies), "loading" (a prefetch is in flight on the side
    stream, ``ready`` is its event) or "device".
    """

    index: int
    tensors: list[torch.Tensor]
    host: list[torch.Tensor]
    state: str = "host"
    ready: torch.cuda.Event | None = None


class BlockSwap:
    """Swap the first ``blocks_to_swap`` blocks of ``model`` between CPU memory and ``device``.

    Construction places the model: every weight outside the swapped blocks moves to ``device``,
    the swapped blocks' weights to CPU memory (pinned when ``device`` is CUDA). :meth:`remove`
    takes the hooks off and puts the whole model on ``device`` (when it fits) or, with
    ``to_device=False``, leaves the swapped blocks in CPU memory.

    Args:
        model: a transformer with a ``blocks`` ModuleList run in order.
        blocks_to_swap: how many leading blocks live in CPU memory (0 .. len(blocks)).
        device: the compute device.
        prefetch: copy the next swapped block on a side stream while the current one runs (CUDA).
        pin_memory: pin the CPU copies (default: when ``device`` is CUDA); needed for async copies.
        keep_trainable: leave the parameters that require grad (a LoRA being trained) on the device
            and swap only the frozen ones (training; see the module docstring).
        trace: record ("load" | "prefetch" | "wait" | "offload", block index) in :attr:`events`
            (tests, debugging).
    """

    def __init__(
        self,
        model: nn.Module,
        blocks_to_swap: int,
        device: torch.device | str,
        *,
        prefetch: bool = True,
        pin_memory: bool | None = None,
        keep_trainable: bool = False,
        trace: bool = False,
    ) -> None:
        blocks = transformer_blocks(model)
        if not 0 <= blocks_to_swap <= len(blocks):
            raise ValueError(f"blocks_to_swap must be in 0..{len(blocks)} for this model, got {blocks_to_swap}.")
        self.model = model
        self.device = torch.device(device)
        self.blocks_to_swap = blocks_to_swap
        cuda = self.device.type == "cuda"
        self._pin = cuda if pin_memory is None else pin_memory
        self._stream = torch.cuda.Stream(self.device) if cuda and prefetch else None
        self._prefetch = prefetch
        self._keep_trainable = keep_trainable
        self.events: list[tuple[str, int]] | None = [] if trace else None
        self._swapped: dict[int, _SwappedBlock] = {}
        self._running: _SwappedBlock | None = None
        self._order = list(range(blocks_to_swap))
        self._place(blocks)
        self._handles: list[RemovableHandle] = []
        for index, block in enumerate(blocks):
            self._handles.append(block.register_forward_pre_hook(self._make_pre_hook(index)))
            if index in self._swapped:
                self._handles.append(block.register_forward_hook(self._make_post_hook(index)))
        logger.info("Block swap on: %d of %d blocks in %s CPU memory (%.2f GiB), prefetch %s.",
                    blocks_to_swap, len(blocks), "pinned" if self._pin else "pageable",
                    sum(module_bytes(blocks[i]) for i in self._order) / GIB, "on" if self._stream else "off")

    # -- placement ---------------------------------------------------------------------------

    def _place(self, blocks: nn.ModuleList) -> None:
        swapped_ids = set()
        for index in self._order:
            tensors = [t for t in [*blocks[index].parameters(), *blocks[index].buffers()]
                       if not (self._keep_trainable and t.requires_grad)]
            swapped_ids.update(id(t) for t in tensors)
            host = [self._host_copy(t) for t in tensors]
            for tensor, copy in zip(tensors, host):
                tensor.data = copy
            self._swapped[index] = _SwappedBlock(index, tensors, host)
        for tensor in [*self.model.parameters(), *self.model.buffers()]:
            if id(tensor) not in swapped_ids:
                tensor.data = tensor.data.to(self.device)

    def _host_copy(self, tensor: torch.Tensor) -> torch.Tensor:
        """The CPU copy a swapped tensor lives in (pinned: one copy straight into page-locked memory)."""
        if not self._pin:
            return tensor.detach().to("cpu")
        if tensor.device.type == "cpu" and tensor.is_pinned():
            return tensor.detach()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor.detach())

    # -- moves -------------------------------------------------------------------------------

    def _record(self, kind: str, index: int) -> None:
        if self.events is not None:
            self.events.append((kind, index))

    def _copy_to_device(self, block: _SwappedBlock) -> None:
        for tensor, host in zip(block.tensors, block.host):
            tensor.data = host.to(self.device, non_blocking=self._pin, copy=True)

    def _load(self, block: _SwappedBlock) -> None:
        """Make ``block`` resident before it runs: wait for its prefetch or copy it now."""
        if block.state == "loading":
            torch.cuda.current_stream(self.device).wait_event(block.ready)
            for tensor in block.tensors:  # allocated on the side stream, used on the compute stream
                tensor.data.record_stream(torch.cuda.current_stream(self.device))
            block.ready = None
            self._record("wait", block.index)
        elif block.state == "host":
            self._copy_to_device(block)
            self._record("load", block.index)
        block.state = "device"

    def _start_prefetch(self, block: _SwappedBlock) -> None:
        if block.state != "host":
            return
        if self._stream is None:  # no side stream (CPU, or prefetch off on CUDA): copy right away
            self._copy_to_device(block)
            block.state = "device"
        else:
            with torch.cuda.stream(self._stream):
                self._copy_to_device(block)
                block.ready = torch.cuda.Event()
                block.ready.record(self._stream)
            block.state = "loading"
        self._record("prefetch", block.index)

    def _offload(self, block: _SwappedBlock) -> None:
        if block.state == "loading":  # never ran: let the copy finish before dropping its buffers
            block.ready.synchronize()
            block.ready = None
        for tensor, host in zip(block.tensors, block.host):
            tensor.data = host
        block.state = "host"
        self._record("offload", block.index)

    def _next_swapped(self, index: int, *, backward: bool = False, wrap: bool = True) -> _SwappedBlock | None:
        """The swapped block that runs next after block ``index``, in the backward pass (checkpointed
        blocks run again, last to first) the one before it; with ``wrap``, past the last one the
        first of the next forward."""
        if not self._order:
            return None
        candidates = [i for i in self._order if i < index][::-1] if backward else [i for i in self._order if i > index]
        if not candidates and wrap:
            candidates = [self._order[0]]
        following = candidates[0] if candidates else index
        return None if following == index else self._swapped[following]

    def _offload_previous(self, block: _SwappedBlock) -> None:
        """Send back the swapped block that ran before ``block`` if it is still on the device. In the
        forward pass it never is (its post-hook ran); in the backward pass a checkpointed block's
        recomputation stops at its last needed op, before the post-hook, so it goes back here."""
        previous, self._running = self._running, block
        if previous is not None and previous is not block and previous.state == "device":
            self._offload(previous)

    def _check_autograd(self, module: nn.Module, block: _SwappedBlock, args: tuple) -> None:
        """Refuse a forward that autograd records for a backward pass that could not work: swapped
        weights that require grad, or blocks that are not checkpointed."""
        if not torch.is_grad_enabled():
            return
        if any(t.requires_grad for t in block.tensors):
            raise RuntimeError(
                "Block swap cannot train swapped weights: freeze the base weights (model.requires_grad_(False)) and "
                "swap with keep_trainable=True, which keeps the trainable ones (a LoRA) on the device; or run "
                "inference under torch.no_grad() (the sampler and pipeline do)."
            )
        if getattr(self.model, "gradient_checkpointing", False):
            return
        inputs = [a for a in args if isinstance(a, torch.Tensor)]
        if any(t.requires_grad for t in [*inputs, *module.parameters()]):
            raise RuntimeError(
                "Block swap under autograd needs gradient checkpointing: call model.enable_gradient_checkpointing() "
                "(the trainer's train.gradient_checkpointing = true), or run inference under torch.no_grad() (the "
                "sampler and pipeline do). Without it the backward pass would need weights already back on the CPU."
            )

    def _make_pre_hook(self, index: int):
        def pre_hook(module: nn.Module, args: tuple) -> None:
            block = self._swapped.get(index)
            if block is not None:
                self._check_autograd(module, block, args)
                self._offload_previous(block)
                self._load(block)
            # Inference repeats forwards, so the last block prefetches the first; in training (grad on, or a
            # model in train mode whose checkpointed blocks run without grad) a backward pass comes next.
            inference = not torch.is_grad_enabled() and not self.model.training
            following = self._next_swapped(index, backward=in_backward_pass(), wrap=inference)
            if self._prefetch and following is not None:
                self._start_prefetch(following)

        return pre_hook

    def _make_post_hook(self, index: int):
        def post_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if in_backward_pass():  # a recomputation: its gradients still need the weights (see the module docs)
                return
            self._offload(self._swapped[index])

        return post_hook

    # -- public ------------------------------------------------------------------------------

    def offload_all(self) -> None:
        """Put every swapped block back in CPU memory (e.g. a prefetched one, before the VAE runs)."""
        for block in self._swapped.values():
            if block.state != "host":
                self._offload(block)
        self._running = None

    def remove(self, *, to_device: bool = True) -> None:
        """Take the hooks off; with ``to_device`` the swapped blocks move to the device for good."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.offload_all()
        if to_device:
            for block in self._swapped.values():
                for tensor, host in zip(block.tensors, block.host):
                    tensor.data = host.to(self.device)
        self._swapped = {}
        self._order = []
