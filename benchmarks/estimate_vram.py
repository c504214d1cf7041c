"""Simulated peak memory of the full-size 14B on the default 4DNeX job, without a GPU.

The transformer is built from its config under PyTorch's ``FakeTensorMode``: tensors with shapes
and dtypes but no storage, so the 16.4B parameters cost nothing and no kernel runs. Under
it the model then runs what a real run
allocates, counted by a dispatch mode that follows every tensor's storage from the op that
makes it until Python frees it:

* inference: one forward under ``torch.no_grad()`` at 49 x 480 x 720 per modality (the sampler runs
  CFG's two forwards one after the other, so one forward is the peak), bf16 or fp8 weights;
* training: one LoRA step (r 64 on q, k, v, out; gradient checkpointing; forward, backward and
  AdamW) under bf16 autocast at 25 x 320 x 480, bf16 or fp8 base weights, and at the default
  49 x 480 x 720 with the checkpointed block inputs offloaded to CPU memory;
* the VAE decoding the default job's wide latent, bf16 or fp32, untiled or tiled.

What it measures is exact for the eager graph as PyTorch's CPU kernels allocate it: every tensor
alive at the worst moment. A GPU adds what it cannot see: the CUDA context (0.3-0.5 GiB, outside
PyTorch's count), cuBLAS and attention workspaces (tens of MB), and the caching allocator's
rounding and fragmentation (reserved memory above allocated memory). ``bench_gpu_14b.py`` measures
those; this script says where the allocated peak must land.

Block swap is not simulated (fake tensors have no devices to move between): the swap rows add the
simulated activation peak to the weights that stay resident with the fewest swapped blocks
(:func:`~fourdnex_core.lowvram.blocks_to_swap_for_budget`, two swapped blocks in flight) that fit
a 24 GB card (23 GiB for PyTorch).

    python benchmarks/estimate_vram.py                     # the 14B and the VAE (about 2 min on 2 CPU cores)
    python benchmarks/estimate_vram.py --size small         # the script itself, in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import weakref
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from diffusers import AutoencoderKLWan

from fourdnex_core.lowvram import activation_offload, blocks_to_swap_for_budget, enable_vae_tiling
from fourdnex_core.lowvram.activation_offload import offloaded_checkpoint
from fourdnex_core.lowvram.block_swap import GIB, module_bytes, resident_weight_bytes, transformer_blocks
from fourdnex_core.lowvram.fp8_weights import quantize_block_linears
from fourdnex_core.representation import latent_frames
from fourdnex_core.transformer import FourDNeXTransformer3DModel

from bench_gpu_14b import CAP_24GB_GIB, job, model_config_for  # noqa: E402  (benchmarks/ is on sys.path)

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
VAE_CONFIG = Path(__file__).resolve().parents[1] / "fourdnex_core" / "configs" / "wan2.1_vae.json"


@dataclasses.dataclass
class Estimate:
    """One simulated run: bytes on the device by kind at the peak (weights = parameters + buffers)."""

    name: str
    weights: int
    activations: int
    gradients: int = 0
    optimizer: int = 0
    blocks_swapped: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.gradients + self.optimizer


def model_inputs(config: dict, frames: int, height: int, width: int, dtype: torch.dtype) -> dict:
    """The transformer's keyword inputs for the benchmark's job at ``frames`` x ``height`` x ``width`` per modality."""
    conditioning = job(config, frames, height, width)
    condition = conditioning.condition
    return dict(hidden_states=torch.cat([torch.randn(1, 16, *condition.shape[2:]), condition], dim=1).to(dtype),
                timestep=torch.tensor([500.0]), encoder_hidden_states=conditioning.prompt_embeds.to(dtype),
                encoder_hidden_states_image=conditioning.image_embeds.to(dtype), return_dict=False)


@contextlib.contextmanager
def built_in(dtype: torch.dtype) -> Iterator[None]:
    """Modules made inside get ``dtype`` parameters (fake parameters cannot be converted in place)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def fake_model(config: dict, fp8: bool) -> FourDNeXTransformer3DModel:
    """The transformer in bf16 (or with fp8 block Linears) as fake tensors; call inside FakeTensorMode."""
    with built_in(torch.bfloat16):
        model = FourDNeXTransformer3DModel(**config).eval().requires_grad_(False)
    if fp8:
        quantize_block_linears(model)
    return model


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that the ops run inside it create, while they are alive.

    Every op's new output storage is counted once until Python frees it (views and in-place
    results share an input's storage and are not counted); ``peak`` is the most bytes alive at
    once. Tensors made before entering (the weights) are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage()._cdata for t in pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        result = func(*args, **kwargs)
        for tensor in pytree.tree_leaves(result):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":  # meta: no memory
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in self._seen or key in inputs:  # a view, or an in-place result: no new memory
                continue
            self._seen.add(key)
            size = storage.nbytes()
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, key, size)
        return result


def peak_bytes(run) -> int:
    """The most bytes of tensors made by ``run()`` alive at once (tensors that existed before are not counted)."""
    counter = LiveBytes()
    with counter:
        run()
    return counter.peak


def simulate_inference(config: dict, fp8: bool, size: tuple[int, int, int], *, fake: bool = True) -> Estimate:
    """One forward under no_grad; ``fake=False`` runs it for real (small models: checks the simulation)."""
    with FakeTensorMode() if fake else contextlib.nullcontext():
        model = fake_model(config, fp8)
        inputs = model_inputs(config, *size, torch.bfloat16)
        with torch.no_grad():
            activations = peak_bytes(lambda: model(**inputs))
        weights = module_bytes(model)
    return Estimate(f"inference, {'fp8' if fp8 else 'bf16'} weights", weights, activations)


class LoraStandIn(nn.Module):
    """What peft's LoRA Linear computes, for memory: ``base(x) + scale * (x @ A^T) @ B^T``, fp32 A [r, in]
    and B [out, r]. (peft's own layers cannot be made under FakeTensorMode: they move their weights
    with ``Module.to``, which fake parameters refuse.)"""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.lora_A = nn.Parameter(torch.zeros(rank, base.in_features, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x.float(), self.lora_A), self.lora_B).to(x.dtype)


def attach_lora_stand_ins(model: nn.Module, rank: int = 64, alpha: float = 32.0) -> list[nn.Parameter]:
    """A :class:`LoraStandIn` on every block Linear named like :data:`LORA_TARGETS`, the domain embeddings
    trainable (the trainer's defaults); returns the trainable parameters."""
    for block in transformer_blocks(model):
        for name, module in list(block.named_modules()):
            if isinstance(module, nn.Linear) and any(name.endswith(target) for target in LORA_TARGETS):
                block.set_submodule(name, LoraStandIn(module, rank, alpha))
    model.domain_embeddings.requires_grad_(True)
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def _meta_host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """Stands for the pinned CPU copy of an offloaded block input: host memory, not counted."""
    return tensor.detach().to("meta")


def simulate_training(config: dict, fp8: bool, size: tuple[int, int, int], *, fake: bool = True,
                      offload_activations: bool = False) -> Estimate:
    """A LoRA step in steady state: the second step, with the gradients and the AdamW state (the trainable
    tensors', fp32: 4 and 8 bytes per value) already made and kept; activations are all it allocates. ``fake=False`` runs it for real (small models: checks the simulation).
    ``offload_activations``: the checkpointed block inputs go to CPU memory (``[memory]
    offload_activations``); their copies are left out of the count."""
    host_copy = mock.patch.object(activation_offload, "_host_copy", _meta_host_copy) if fake else contextlib.nullcontext()
    with FakeTensorMode() if fake else contextlib.nullcontext(), host_copy:
        model = fake_model(config, fp8)
        trainable = attach_lora_stand_ins(model)
        model.enable_gradient_checkpointing(offloaded_checkpoint if offload_activations else None)
        model.train()
        optimizer = torch.optim.AdamW(trainable, lr=1e-5)
        inputs = model_inputs(config, *size, torch.bfloat16)  # CPU autocast leaves conv3d to its inputs

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                output = model(**inputs)[0]
            output.float().square().mean().backward()
            optimizer.step()
            # Kept, not freed as the trainer does: an upper bound (the trainer makes them again during backward).
            optimizer.zero_grad(set_to_none=False)

        step()  # the first step makes the gradients and the AdamW state, which then stay: count the second
        activations = peak_bytes(step)
        weights = module_bytes(model)
        lora = sum(parameter.numel() * parameter.element_size() for parameter in trainable)
    name = f"training step at {'x'.join(map(str, size))}, {'fp8' if fp8 else 'bf16'} base"
    if offload_activations:
        name += ", activations offloaded"
    return Estimate(name, weights, activations, lora, 2 * lora)


def simulate_vae_decode(config: dict, dtype: torch.dtype, tiled: bool, size: tuple[int, int, int], *,
                        fake: bool = True) -> Estimate:
    """Decoding the wide latent of ``size`` (frames, height, width per modality) in ``dtype``, untiled or in
    the default 256-pixel tiles with 64 pixels of overlap."""
    frames, height, width = size
    with FakeTensorMode() if fake else contextlib.nullcontext():
        with built_in(dtype):
            vae = AutoencoderKLWan(**config).eval()
        if tiled:
            enable_vae_tiling(vae)
        latent = torch.randn(1, 16, latent_frames(frames), height // 8, 2 * width // 8, dtype=dtype)
        with torch.no_grad():
            activations = peak_bytes(lambda: vae.decode(latent, return_dict=False))
        weights = module_bytes(vae)
    name = f"VAE decode, {str(dtype).removeprefix('torch.')}, {'tiled 256/64 px' if tiled else 'untiled'}"
    return Estimate(name, weights, activations)


def with_swap_for_cap(estimate: Estimate, config: dict, fp8: bool, cap_gib: float) -> Estimate:
    """``estimate`` with the fewest swapped blocks that make its peak fit ``cap_gib`` (maybe none)."""
    with FakeTensorMode():
        model = fake_model(config, fp8)
        block_bytes = [module_bytes(block) for block in transformer_blocks(model)]
    other = estimate.weights - sum(block_bytes)  # embeddings, head and the (resident) LoRA
    budget = int(cap_gib * GIB) - (estimate.total - estimate.weights)
    swapped = blocks_to_swap_for_budget(block_bytes, other, budget)
    resident = resident_weight_bytes(block_bytes, other, swapped)
    return dataclasses.replace(estimate, name=f"{estimate.name}, {swapped} blocks swapped", weights=resident,
                               blocks_swapped=swapped)


def markdown(estimates: list[Estimate], args: argparse.Namespace) -> str:
    lines = [f"{args.size} transformer; inference at {args.frames} x {args.height} x {args.width} per modality, "
             f"training at {args.train_frames} x {args.train_height} x {args.train_width}; GiB at the allocated peak.",
             "",
             "| run | weights on the GPU | activations | LoRA grads | AdamW state | peak (allocated) |",
             "|---|---|---|---|---|---|"]
    for e in estimates:
        cells = [e.weights, e.activations, e.gradients, e.optimizer, e.total]
        lines.append(f"| {e.name} | " + " | ".join(f"{value / GIB:.2f}" for value in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("14b", "small"), default="14b")
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720, help="per modality")
    parser.add_argument("--train-frames", type=int, default=25)
    parser.add_argument("--train-height", type=int, default=320)
    parser.add_argument("--train-width", type=int, default=480)
    parser.add_argument("--cap-gib", type=float, default=CAP_24GB_GIB, help="what a 24 GB card leaves PyTorch")
    parser.add_argument("--json", type=Path, help="also write the estimates here")
    args = parser.parse_args()

    config = model_config_for(args)
    job, train = (args.frames, args.height, args.width), (args.train_frames, args.train_height, args.train_width)
    estimates = []
    for fp8 in (False, True):
        inference = simulate_inference(config, fp8, job)
        training = simulate_training(config, fp8, train)
        offloaded = simulate_training(config, fp8, job, offload_activations=True)
        for estimate in (inference, training, offloaded):
            swapped = with_swap_for_cap(estimate, config, fp8, args.cap_gib)
            estimates += [estimate, swapped] if swapped.blocks_swapped else [estimate]
    vae_config = {key: value for key, value in json.loads(VAE_CONFIG.read_text()).items() if not key.startswith("_")}
    for dtype in (torch.bfloat16, torch.float32):
        for tiled in (False, True):
            estimates.append(simulate_vae_decode(vae_config, dtype, tiled, job))
    print(markdown(estimates, args))
    if args.json:
        args.json.write_text(json.dumps([{**dataclasses.asdict(e), "total": e.total} for e in estimates], indent=1))


if __name__ == "__main__":
    main()
