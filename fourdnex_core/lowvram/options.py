"""All memory/speed options in one place, applied in the one order that works.

:class:`LowVramOptions` is what the CLI, the nodes and the trainer expose;
:func:`prepare_transformer` applies the transformer's options to a loaded model and
:func:`sampling_transformer` wraps it for one sampling run. Order (each step needs the one before):

1. fp8 weights: quantize bf16 block Linears (skipped when the checkpoint is already fp8);
2. fp8 matmul: switch fp8 layers to ``torch._scaled_mm``;
3. attention backend;
4. placement: block swap (N blocks, or "auto" from free VRAM) or the whole model on the device;
5. torch.compile of the blocks (their ``forward`` only: placement's hooks stay eager, so 4 and 5
   commute and :func:`apply_model_options` does 1-3 and 5 once while :func:`transformer_on_device`
   places the model per run, as the ComfyUI nodes do);
6. per run: the step cache wrapper.

:data:`RECOMMENDED` lists starting settings per GPU size (see the README's "Low VRAM" section).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

import torch
from torch import nn

from .attention import BACKENDS, set_attention_backend
from .block_swap import GIB, BlockSwap, auto_blocks_to_swap, transformer_blocks
from .compile import COMPILE_MODES, compile_blocks
from .fp8_matmul import enable_fp8_matmul
from .fp8_weights import fp8_layer_count, quantize_block_linears
from .offload import OffloadPolicy
from .step_cache import StepCache
from .vae_tiling import check_tile, enable_vae_tiling

logger = logging.getLogger(__name__)

FP8_MODES = ("off", "weights", "matmul")


@dataclasses.dataclass
class LowVramOptions:
    """Memory and speed options for a 4DNeX run (defaults: everything resident, nothing approximate).

    blocks_to_swap: transformer blocks kept in CPU memory (0: none; "auto": from free VRAM minus
        ``activation_reserve_gb``). Exact.
    prefetch: copy the next swapped block while the current one runs (CUDA side stream).
    fp8: "off"; "weights" (fp8 storage, per-layer upcast: half the memory); "matmul" (fp8 weights and
        fp8 matmuls, CC 8.9+ GPUs). Approximate.
    attention: "sdpa", "math", "cudnn", "flash", "flash3", "sage", "xformers" (see .attention).
    compile / compile_mode: torch.compile the blocks.
    step_cache_threshold: TeaCache-style step skipping (0: off; 0.1-0.3 typical). Approximate.
    vae_tiling / vae_tile_size / vae_tile_overlap: tiled VAE encode/decode, in pixels.
    offload: what the text encoder, CLIP vision and VAE do after their stage: "keep", "cpu", "free";
        with "cpu" or "free" the pipeline also places the transformer for the sampling only.
    embedding_cache: re-use prompt embeddings for a prompt seen before (never load UMT5 for it).
    """

    blocks_to_swap: int | str = 0
    activation_reserve_gb: float = 6.0
    prefetch: bool = True
    fp8: str = "off"
    attention: str = "sdpa"
    compile: bool = False
    compile_mode: str | None = None
    step_cache_threshold: float = 0.0
    vae_tiling: bool = False
    vae_tile_size: int = 256
    vae_tile_overlap: int = 64
    offload: str = "keep"
    embedding_cache: bool = True

    def __post_init__(self) -> None:
        if self.blocks_to_swap != "auto" and (not isinstance(self.blocks_to_swap, int) or self.blocks_to_swap < 0):
            raise ValueError(f"blocks_to_swap must be a block count >= 0 or 'auto', got {self.blocks_to_swap!r}.")
        if self.fp8 not in FP8_MODES:
            raise ValueError(f"fp8 must be one of {FP8_MODES}, got {self.fp8!r}.")
        if self.attention not in BACKENDS:
            raise ValueError(f"Unknown attention backend {self.attention!r}; choose one of {', '.join(BACKENDS)}.")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}.")
        if self.compile and self.compile_mode == "reduce-overhead" and self.blocks_to_swap != 0:
            raise ValueError("compile_mode 'reduce-overhead' (CUDA graphs) cannot be combined with block swap: the "
                             "weights move between calls. Use the default mode or blocks_to_swap=0.")
        if self.step_cache_threshold < 0:
            raise ValueError(f"step_cache_threshold must be >= 0 (0 = off), got {self.step_cache_threshold}.")
        if self.activation_reserve_gb < 0:
            raise ValueError(f"activation_reserve_gb must be >= 0, got {self.activation_reserve_gb}.")
        check_tile(self.vae_tile_size, self.vae_tile_overlap)
        policies = [policy.value for policy in OffloadPolicy]
        if self.offload not in policies:
            raise ValueError(f"offload must be one of {', '.join(policies)}, got {self.offload!r}.")

    @property
    def exact(self) -> bool:
        """Whether these options leave the output bit-identical to the plain path (up to kernel choice)."""
        return self.fp8 == "off" and self.step_cache_threshold == 0 and not self.vae_tiling


@dataclasses.dataclass
class PreparedTransformer:
    """A transformer with the options applied; ``block_swap`` is set when blocks are swapped."""

    model: nn.Module
    options: LowVramOptions
    block_swap: BlockSwap | None = None


def apply_fp8_weights(model: nn.Module, options: LowVramOptions) -> None:
    """Step 1: quantize the block Linears to fp8 when ``options.fp8`` asks for it and the model has no
    fp8 layers yet (a checkpoint loaded in fp8 is kept as it is)."""
    if options.fp8 != "off" and fp8_layer_count(model) == 0:
        quantize_block_linears(model)


def apply_model_options(model: nn.Module, options: LowVramOptions, device: torch.device | str) -> None:
    """Steps 1-3 and 5 of the module docstring, in place, wherever ``model`` is now: fp8 weights,
    fp8 matmul, the attention backend and torch.compile (of the blocks' ``forward`` only, so block
    swap's hooks still run eagerly around it). ``device`` is where the model will compute (checked
    for fp8 matmul and compile support). Applying the same options twice changes nothing more."""
    transformer_blocks(model)
    apply_fp8_weights(model, options)
    if options.fp8 == "matmul":
        enable_fp8_matmul(model, device)
    if options.attention != "sdpa":
        set_attention_backend(model, options.attention, device)
    if options.compile:
        compile_blocks(model, device, mode=options.compile_mode)


def place_transformer(
    model: nn.Module, options: LowVramOptions, device: torch.device | str, *, keep_trainable: bool = False
) -> BlockSwap | None:
    """Step 4: put ``model`` on ``device``, or swap its first N blocks (``options.blocks_to_swap``;
    "auto": from free VRAM). Returns the :class:`BlockSwap` when blocks are swapped.
    ``keep_trainable``: swap only frozen weights (training: the LoRA stays on ``device``)."""
    device = torch.device(device)
    count = options.blocks_to_swap
    if count == "auto":
        count = auto_blocks_to_swap(model, device, int(options.activation_reserve_gb * GIB))
    if count > 0:
        return BlockSwap(model, count, device, prefetch=options.prefetch, keep_trainable=keep_trainable)
    model.to(device)
    return None


@contextlib.contextmanager
def transformer_on_device(
    model: nn.Module,
    options: LowVramOptions,
    device: torch.device | str,
    offload_device: torch.device | str = "cpu",
) -> Iterator[BlockSwap | None]:
    """Place ``model`` for one run (see :func:`place_transformer`) and take it off ``device`` after:
    swapped blocks are unhooked and everything returns to ``offload_device`` (ComfyUI's way: a
    model waits off the GPU between runs). Yields the :class:`BlockSwap` or None."""
    swap = place_transformer(model, options, device)
    try:
        yield swap
    finally:
        if swap is not None:
            swap.remove(to_device=False)
        model.to(offload_device)


def prepare_transformer(model: nn.Module, options: LowVramOptions, device: torch.device | str) -> PreparedTransformer:
    """Apply ``options`` to a loaded transformer and place it on ``device`` (see the module docstring).

    Load the transformer to the CPU when swapping blocks (the whole 14B does not fit a 24 GB GPU
    first); otherwise it may already be on ``device``.
    """
    apply_model_options(model, options, device)
    swap = place_transformer(model, options, device)
    return PreparedTransformer(model, options, swap)


def sampling_transformer(model: nn.Module, options: LowVramOptions, num_inference_steps: int) -> nn.Module:
    """The callable to hand the sampler for one run: ``model``, or a :class:`StepCache` around it."""
    if options.step_cache_threshold <= 0:
        return model
    return StepCache(model, num_inference_steps, threshold=options.step_cache_threshold)


def prepare_vae(vae: nn.Module, options: LowVramOptions) -> None:
    """Turn on VAE tiling when ``options`` ask for it."""
    if options.vae_tiling:
        enable_vae_tiling(vae, tile_size=options.vae_tile_size, overlap=options.vae_tile_overlap)


# Starting points per GPU memory (GB). Estimates from weight sizes (14B blocks: 32.4 GB bf16, 16.2 GB fp8;
# text encoder 11 GB bf16) and a ~6 GB activation reserve at 49 x 480 x 1440; the GPU benchmark
# (benchmarks/bench_gpu_14b.py) is what confirms them.
RECOMMENDED: dict[int, LowVramOptions] = {
    24: LowVramOptions(blocks_to_swap="auto", fp8="weights", offload="free", vae_tiling=True),
    32: LowVramOptions(blocks_to_swap="auto", fp8="weights", offload="cpu", vae_tiling=True),
    48: LowVramOptions(blocks_to_swap="auto", offload="cpu", vae_tiling=True),
    80: LowVramOptions(attention="sdpa", compile=True),
}


def recommended_options(total_memory_gb: float) -> LowVramOptions:
    """The :data:`RECOMMENDED` entry for the largest size the GPU has (``total_memory_gb`` as torch
    reports it: a "24 GB" card shows ~23.6, an 80 GB one ~79.2, so 10% slack is allowed)."""
    fitting = [size for size in RECOMMENDED if 0.9 * size <= total_memory_gb]
    if not fitting:
        raise ValueError(f"{total_memory_gb:.0f} GB is below the smallest supported GPU size "
                         f"({min(RECOMMENDED)} GB) for the 14B model.")
    return dataclasses.replace(RECOMMENDED[max(fitting)])
