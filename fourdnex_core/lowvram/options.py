"""All memory/speed options in one place, applied in the one order that works.

:class:`LowVramOptions` is what the CLI, the nodes and the trainer expose, each generated from (or, for the
trainer's ``[memory]``, checked against) its fields' declarations (:func:`option`);
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
OFFLOAD_POLICIES = tuple(policy.value for policy in OffloadPolicy)
FACES = ("node", "cli", "train")
"""Where the options are set: the Memory Options node, the ``fourdnex`` flags, the trainer's ``[memory]``."""


def option(default, help: str, *, node: dict | None = None, cli: str | None = None, train: bool = False,
           left_out: dict[str, str] | None = None, choices: tuple | None = None, auto: bool = False,
           metavar: str | None = None):
    """A :class:`LowVramOptions` field with its one help text and the faces that show it.

    node: the node widget's settings (min, max, step), or None when the node leaves it out;
    cli: the ``fourdnex`` flag, or None; train: whether ``[memory]`` has the key. ``left_out``
    says, per face, why the option is not there (every field is in a face or has a reason:
    ``tests/test_lowvram_options.py``). ``auto``: the value may also be "auto" (-1 in the node and
    ``[memory]``). Each face is generated from these (the trainer's ``[memory]`` is checked).
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "node": node, "cli": cli, "train": train, "left_out": left_out or {},
        "choices": choices, "auto": auto, "metavar": metavar})


def options_of(face: str) -> list[dataclasses.Field]:
    """The :class:`LowVramOptions` fields a face shows (``node``, ``cli`` or ``train``), in declaration order."""
    if face not in FACES:
        raise ValueError(f"Unknown face {face!r}; use one of {', '.join(FACES)}.")
    return [field for field in dataclasses.fields(LowVramOptions) if field.metadata[face] not in (None, False)]


@dataclasses.dataclass
class LowVramOptions:
    """Memory and speed options for a 4DNeX run (defaults: everything resident, nothing approximate).

    Each field's ``metadata["help"]`` says what it does (:func:`option`); the node, the CLI and the
    trainer show those texts. Exactness: block swap, prefetch, offload exact; fp8, step cache and
    VAE tiling approximate; attention and compile up to kernel rounding.
    """

    blocks_to_swap: int | str = option(
        0, "Transformer blocks kept in CPU memory and copied to the GPU just before they run (exact, slower per "
           "step). 0: none; auto (-1 in the node and in [memory]): as many as the free VRAM minus the activation "
           "reserve needs.",
        node={"min": -1, "max": 40}, cli="--blocks-to-swap", train=True, auto=True, metavar="N|auto")
    activation_reserve_gb: float = option(
        6.0, "GiB of VRAM kept for activations when blocks_to_swap is auto (the trainer's [memory] default: 10).",
        cli="--activation-reserve-gb", train=True, metavar="GIB",
        left_out={"node": "the node keeps the default (its widgets are saved in workflows by position)"})
    prefetch: bool = option(
        True, "Copy the next swapped block while the current one runs (a CUDA side stream).",
        node={}, cli="--prefetch", left_out={"train": "training always prefetches (forward and backward)"})
    fp8: str = option(
        "off", "weights: fp8 storage, half the memory, upcast per layer (about 1% off). matmul: fp8 matrix "
               "products too (RTX 40xx, L40, H100 and newer; no backward pass, so not for training). fp8 model "
               "files are fp8 anyway.",
        node={}, cli="--fp8", train=True, choices=FP8_MODES)
    attention: str = option(
        "sdpa", "Attention kernel. sage / flash / flash3 / xformers need their package installed (sage has no "
                "backward pass, so not for training).",
        node={}, cli="--attention", train=True, choices=tuple(BACKENDS))
    compile: bool = option(
        False, "torch.compile the transformer blocks (needs Triton on CUDA; the first step is slow).",
        node={}, cli="--compile", train=True)
    compile_mode: str | None = option(
        None, "torch.compile's mode (None: its default; reduce-overhead needs blocks_to_swap = 0).",
        choices=COMPILE_MODES, left_out={face: "Python only: the default mode suits every run" for face in FACES})
    step_cache_threshold: float = option(
        0.0, "Skip transformer steps whose input barely changed (TeaCache-style; 0 = off, 0.1-0.3 typical). The "
             "log says how many steps were skipped.",
        node={"min": 0.0, "max": 1.0, "step": 0.01}, cli="--step-cache", metavar="THRESHOLD",
        left_out={"train": "inference only: a training step is one forward and backward pass"})
    vae_tiling: bool = option(
        False, "Encode and decode in overlapping tiles (for 480 x 1440 frames on small GPUs; approximate at the "
               "seams).",
        node={}, cli="--vae-tiling", train=True)
    vae_tile_size: int = option(256, "VAE tile side in pixels.", node={"min": 64, "max": 2048, "step": 32},
                                cli="--vae-tile-size", train=True, metavar="PIXELS")
    vae_tile_overlap: int = option(64, "Overlap of neighbouring VAE tiles in pixels (blended).",
                                   node={"min": 0, "max": 1024, "step": 16}, cli="--vae-tile-overlap", train=True,
                                   metavar="PIXELS")
    offload: str = option(
        "keep", "Text encoder, CLIP vision and VAE after their stage: keep on the GPU, move to CPU memory (cpu), "
                "or free (loaded again when needed); with cpu or free the transformer is on the GPU for the "
                "sampling only.",
        cli="--offload", choices=OFFLOAD_POLICIES,
        left_out={"node": "ComfyUI's model management moves the models",
                  "train": "prepare encodes before training and run never loads the encoders"})

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
        if self.offload not in OFFLOAD_POLICIES:
            raise ValueError(f"offload must be one of {', '.join(OFFLOAD_POLICIES)}, got {self.offload!r}.")

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
