"""The full-size Wan2.1-I2V-14B on the default 4DNeX job, per memory/speed option: s/step, 50-step time, peak VRAM.

Nothing is downloaded: the transformer is built from its config with random weights, directly on
the GPU (a forward's speed and memory do not depend on the weight values). The job is 4DNeX's
default: 49 frames of 480 x 720 per modality (a 13 x 60 x 180 wide latent: 35,100 tokens), CFG
(two forwards per step), bf16, UniPC. Every configuration runs in a fresh process (clean memory
counters): one warm-up step (compilation, kernel autotuning), then ``--steps`` timed steps; the
50-step time is extrapolated. Configurations with a memory cap limit this process's CUDA
allocator to that size (``torch.cuda.set_per_process_memory_fraction``) to stand for a smaller GPU.

Training rows (``train-*``) time one LoRA training step instead (r 64 on the attention projections,
gradient checkpointing, AdamW, bf16 autocast) on a smaller clip (``--train-frames/-height/-width``,
25 x 320 x 480 by default: the size a 24 GB card can hold the activations of).

Output deviation: before timing, every configuration runs one probe forward (same random weights,
same inputs, t = 500) and the driver compares its output with the ``bf16`` configuration's
(relative L2 and max abs): exact options show 0, fp8 and the attention kernels their rounding.

    python benchmarks/bench_gpu_14b.py                              # every configuration available here
    python benchmarks/bench_gpu_14b.py --configs bf16,fp8-swap-24gb --json out.jsonl
    python benchmarks/bench_gpu_14b.py --list
    python benchmarks/bench_gpu_14b.py --configs train-bf16,train-fp8-swap-24gb    # the trainer's memory options
    # smoke test of the script itself on a CPU (small random model, tiny video):
    python benchmarks/bench_gpu_14b.py --device cpu --size small --frames 5 --height 32 --width 48 --steps 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fourdnex_core.loading.safetensors_io import build_empty_model
from fourdnex_core.lowvram import (
    LowVramOptions,
    StepCache,
    apply_model_options,
    available_attention_backends,
    blocks_to_swap_for_budget,
    offloaded_checkpoint,
    place_transformer,
)
from fourdnex_core.lowvram.block_swap import GIB, module_bytes, transformer_blocks
from fourdnex_core.lowvram.compile import check_compile_backend
from fourdnex_core.lowvram.fp8_matmul import check_fp8_matmul_device
from fourdnex_core.lowvram.fp8_weights import fp8_layer_count, quantize_block_linears
from fourdnex_core.representation import condition_mask, latent_frames
from fourdnex_core.sampler import Conditioning, SamplingSettings, sample
from fourdnex_core.transformer import FourDNeXTransformer3DModel
from fourdnex_train.flow_matching import Batch, TimestepSampling, flow_matching_loss
from fourdnex_train.lora_setup import add_lora

CONFIG_14B = Path(__file__).resolve().parents[1] / "fourdnex_core" / "configs" / "wan2.1_i2v_14b_480p_transformer.json"
SMALL = dict(num_attention_heads=4, attention_head_dim=32, in_channels=36, out_channels=16, text_dim=64, freq_dim=64,
             ffn_dim=256, num_layers=4, image_dim=64, added_kv_proj_dim=128)
FULL_STEPS = 50
SKIP_SHARES = (0.3, 0.5)  # step-cache projections: share of the 50 steps skipped
CAP_24GB_GIB = 23.0  # what a 24 GB card leaves for PyTorch after the CUDA context


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One row: LowVramOptions fields, an optional allocator cap, and whether to time step caching
    or a training step.

    blocks_to_swap "half" swaps half the blocks; "cap" the fewest blocks that fit the cap minus ``--reserve-gib``.
    """

    name: str
    description: str
    options: dict
    cap_gib: float | None = None
    step_cache: bool = False
    train: bool = False
    offload_activations: bool = False  # training rows: at the inference job's size, block inputs offloaded


def configs() -> dict[str, BenchConfig]:
    rows = [
        BenchConfig("bf16", "bf16 resident, SDPA", {}),
        *[BenchConfig(f"bf16-{name}", f"bf16 resident, {name} attention", {"attention": name})
          for name in ("cudnn", "flash", "flash3", "sage", "xformers")],
        BenchConfig("bf16-compile", "bf16 resident, SDPA, torch.compile blocks", {"compile": True}),
        BenchConfig("bf16-stepcache", "bf16 resident, SDPA, step cache (full vs skipped step)", {}, step_cache=True),
        BenchConfig("bf16-swap-half", "bf16, half the blocks swapped, prefetch", {"blocks_to_swap": "half"}),
        BenchConfig("bf16-swap-24gb", "bf16, blocks swapped to fit 24 GB", {"blocks_to_swap": "cap"}, CAP_24GB_GIB),
        BenchConfig("fp8", "fp8 weights (upcast per layer), SDPA", {"fp8": "weights"}),
        BenchConfig("fp8mm", "fp8 weights + fp8 matmul, SDPA", {"fp8": "matmul"}),
        BenchConfig("fp8-swap-24gb", "fp8 weights, blocks swapped to fit 24 GB", {"fp8": "weights",
                                                                                  "blocks_to_swap": "cap"},
                    CAP_24GB_GIB),
        BenchConfig("fp8-24gb", "fp8 weights resident under a 24 GB cap", {"fp8": "weights"}, CAP_24GB_GIB),
        BenchConfig("fast", "fp8 matmul + fastest attention + compile + step cache",
                    {"fp8": "matmul", "attention": "best", "compile": True}, step_cache=True),
        BenchConfig("train-bf16", "LoRA training step, bf16 resident", {}, train=True),
        BenchConfig("train-fp8-swap-half", "LoRA training step, fp8 weights, half the blocks swapped",
                    {"fp8": "weights", "blocks_to_swap": "half"}, train=True),
        BenchConfig("train-fp8-swap-24gb", "LoRA training step, fp8 weights, blocks swapped to fit 24 GB",
                    {"fp8": "weights", "blocks_to_swap": "cap"}, CAP_24GB_GIB, train=True),
        BenchConfig("train-full-offload-half", "LoRA training step at the job's size, fp8 weights, activations "
                    "offloaded, half the blocks swapped", {"fp8": "weights", "blocks_to_swap": "half"}, train=True,
                    offload_activations=True),
        BenchConfig("train-full-offload-24gb", "LoRA training step at the job's size, fp8 weights, activations "
                    "offloaded, blocks swapped to fit 24 GB", {"fp8": "weights", "blocks_to_swap": "cap"},
                    CAP_24GB_GIB, train=True, offload_activations=True),
    ]
    return {row.name: row for row in rows}


FASTEST_ATTENTION = ("sage", "flash3", "flash", "sdpa")


def best_attention(device: torch.device) -> str:
    """The fastest attention backend installed here (SageAttention first)."""
    available = available_attention_backends(device)
    return next(name for name in FASTEST_ATTENTION if name in available)


def unavailable(config: BenchConfig, device: torch.device) -> str | None:
    """Why ``config`` cannot run here, or None."""
    options = config.options
    attention = options.get("attention", "sdpa")
    if attention == "best":
        attention = best_attention(device)
    if attention not in available_attention_backends(device):
        return f"attention {attention!r} not available here"
    try:
        if options.get("fp8") == "matmul":
            check_fp8_matmul_device(device)
        if options.get("compile"):
            check_compile_backend("inductor", device)
    except RuntimeError as error:
        return str(error).split(";")[0]
    if config.cap_gib is not None and device.type != "cuda":
        return "memory caps need CUDA"
    return None


# -- the model and the job ----------------------------------------------------------------------


def random_tensor(name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device,
                  generator: torch.Generator) -> torch.Tensor:
    """Weights with the scale of a trained model: N(0, 1/fan_in) matrices, unit norms, zero biases."""
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=dtype, device=device)
    if len(shape) == 1:
        return torch.ones(shape, dtype=dtype, device=device)
    values = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return (values / math.sqrt(math.prod(shape[1:]))).to(dtype)


def build_transformer(config: dict, device: torch.device, dtype: torch.dtype) -> FourDNeXTransformer3DModel:
    """The transformer with random weights, made tensor by tensor on ``device`` (never on the CPU)."""
    model = build_empty_model(FourDNeXTransformer3DModel, config)
    keep_fp32 = set(model._keep_in_fp32_modules) if dtype != torch.float32 else set()
    generator = torch.Generator(device).manual_seed(0)
    state = {}
    for name, parameter in model.named_parameters():
        target = torch.float32 if keep_fp32.intersection(name.split(".")) else dtype
        state[name] = random_tensor(name, parameter.shape, target, device, generator)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval().requires_grad_(False)


def job(config: dict, frames: int, height: int, width: int) -> Conditioning:
    """Random embeddings and condition for one wide video: [1, 20, f, h, 2w] and the text/image states."""
    generator = torch.Generator().manual_seed(1)
    f, h, w = latent_frames(frames), height // 8, 2 * width // 8
    condition = torch.cat([condition_mask(frames, h, w), torch.randn(1, 16, f, h, w, generator=generator)], dim=1)
    return Conditioning(condition=condition,
                        prompt_embeds=torch.randn(1, 512, config["text_dim"], generator=generator),
                        negative_prompt_embeds=torch.randn(1, 512, config["text_dim"], generator=generator),
                        image_embeds=torch.randn(1, 257, config["image_dim"], generator=generator))


def forward_flops(config: dict, tokens: int) -> float:
    """Matmul FLOPs of one forward: Linear layers on the video tokens plus self- and cross-attention."""
    width, layers, ffn = config["num_attention_heads"] * config["attention_head_dim"], config["num_layers"], config["ffn_dim"]
    linear = 2 * tokens * (6 * width * width + 2 * width * ffn)  # q, k, v, o (self) + q, o (cross) + FFN
    context = 2 * (512 * 2 * width * width + 257 * 2 * width * config["added_kv_proj_dim"])  # cross k/v projections
    attention = 4 * tokens * width * (tokens + 512 + 257)
    return layers * (linear + context + attention)


# -- one configuration (worker process) ---------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(transformer, conditioning: Conditioning, steps: int, device: torch.device,
                dtype: torch.dtype) -> list[float]:
    """Per-step seconds (CFG: two forwards each) of a ``steps``-step sampling run."""
    stamps = []

    def on_step(*_) -> None:
        synchronize(device)
        stamps.append(time.perf_counter())

    synchronize(device)
    stamps.append(time.perf_counter())
    with torch.no_grad():
        sample(transformer, conditioning, SamplingSettings(num_inference_steps=steps), dtype=dtype, device=device,
               on_step=on_step, progress=False)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB}


def probe_output(model, conditioning: Conditioning, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One conditional forward at t = 500 on the job's condition and a seeded latent: the velocity
    [1, 16, f, h, 2w], float32 on the CPU (compared across configurations by the driver)."""
    condition = conditioning.condition
    latent = torch.randn(1, 16, *condition.shape[2:], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        output = model(hidden_states=torch.cat([latent, condition], dim=1).to(device, dtype),
                       timestep=torch.tensor([500.0], device=device),
                       encoder_hidden_states=conditioning.prompt_embeds.to(device, dtype),
                       encoder_hidden_states_image=conditioning.image_embeds.to(device, dtype), return_dict=False)[0]
    return output.float().cpu()


def deviation(output: torch.Tensor, reference: torch.Tensor) -> dict:
    """Relative L2 and max abs difference of a probe output from the reference configuration's."""
    difference = (output - reference).double()
    return {"output_rel_l2": float(difference.norm() / reference.double().norm()),
            "output_max_abs": float(difference.abs().max())}


def model_config_for(args: argparse.Namespace) -> dict:
    model_config = json.loads(CONFIG_14B.read_text()) if args.size == "14b" else dict(SMALL)
    model_config.pop("_class_name", None)
    return model_config


def build_with_options(config: BenchConfig, args: argparse.Namespace, model_config: dict, record: dict):
    """The random-weight model with ``config``'s options applied and placed; the allocator capped.

    Training rows get the LoRA between the fp8 quantization and the other options, as the trainer
    does. Returns (model, trainable parameters or None); fills ``record``.
    """
    device, dtype = torch.device(args.device), compute_dtype(args)
    started = time.perf_counter()
    model = build_transformer(model_config, device, dtype)
    options = dict(config.options)
    if options.get("attention") == "best":
        options["attention"] = best_attention(device)
        record["description"] += f" ({options['attention']})"
    if options.get("fp8") in ("weights", "matmul"):
        quantize_block_linears(model)  # before counting bytes; prepare_transformer then keeps these layers
    trainable = None
    if config.train:
        trainable = add_lora(model, rank=64, alpha=32.0, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        model.enable_gradient_checkpointing(offloaded_checkpoint if config.offload_activations else None)
    if options.get("blocks_to_swap") == "half":
        options["blocks_to_swap"] = len(transformer_blocks(model)) // 2
    elif options.get("blocks_to_swap") == "cap":
        reserve = args.reserve_gib
        if config.train:
            reserve = args.offload_reserve_gib if config.offload_activations else args.train_reserve_gib
        options["blocks_to_swap"] = swap_count_for_cap(model, config.cap_gib, reserve)
    options = LowVramOptions(**options)
    apply_model_options(model, options, device)  # fp8 layers exist already: only matmul, attention, compile
    swap = place_transformer(model, options, device, keep_trainable=config.train)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        if config.cap_gib is not None:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(config.cap_gib * GIB / total, device)
    record.update(build_seconds=time.perf_counter() - started, blocks_swapped=swap.blocks_to_swap if swap else 0,
                  fp8_layers=fp8_layer_count(model), cap_gib=config.cap_gib)
    return model, trainable


def compute_dtype(args: argparse.Namespace) -> torch.dtype:
    return torch.bfloat16 if args.device != "cpu" else torch.float32


def run_config(config: BenchConfig, args: argparse.Namespace) -> dict:
    if config.train:
        return run_train_config(config, args)
    device, dtype = torch.device(args.device), compute_dtype(args)
    model_config = model_config_for(args)
    record = {"config": config.name, "description": config.description, "device": device_name(device)}
    model, _ = build_with_options(config, args, model_config, record)
    conditioning = job(model_config, args.frames, args.height, args.width)
    tokens = math.prod(conditioning.condition.shape[2:]) // 4
    try:
        if args.probe:
            torch.save(probe_output(model, conditioning, device, dtype), args.probe)
        warmup = timed_steps(model, conditioning, 1, device, dtype)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        weights = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None
        steps = timed_steps(model, conditioning, args.steps, device, dtype)
        record.update(warmup_seconds=warmup[0], step_seconds=steps, weights_gib=weights, **memory(device))
        per_step = statistics.median(steps)
        record.update(seconds_per_step=per_step, minutes_50=FULL_STEPS * per_step / 60,
                      tflops=2 * forward_flops(model_config, tokens) / per_step / 1e12)
        if config.step_cache:
            record.update(step_cache_timing(model, conditioning, args.steps, device, dtype, per_step))
            record.update(memory(device))
    except torch.cuda.OutOfMemoryError as error:
        record.update(error=f"out of memory{' under the cap' if config.cap_gib else ''}: {str(error)[:120]}")
    return record


def training_batch(model_config: dict, frames: int, height: int, width: int) -> Batch:
    """A random training clip: RGB and XYZ latents [1, 16, f, h, w] plus the job's condition and embeddings."""
    conditioning = job(model_config, frames, height, width)
    generator = torch.Generator().manual_seed(3)
    shape = (1, 16, *conditioning.condition.shape[2:-1], conditioning.condition.shape[-1] // 2)
    return Batch(rgb_latent=torch.randn(shape, generator=generator), xyz_latent=torch.randn(shape, generator=generator),
                 condition=conditioning.condition, prompt_embeds=conditioning.prompt_embeds,
                 image_embeds=conditioning.image_embeds)


def run_train_config(config: BenchConfig, args: argparse.Namespace) -> dict:
    """Seconds and peak memory of LoRA training steps (forward, backward, AdamW) with ``config``'s options."""
    device = torch.device(args.device)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    model_config = model_config_for(args)
    size = ([args.frames, args.height, args.width] if config.offload_activations
            else [args.train_frames, args.train_height, args.train_width])
    record = {"config": config.name, "description": config.description, "device": device_name(device),
              "train_size": size}
    model, trainable = build_with_options(config, args, model_config, record)
    model.train()
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    batch = training_batch(model_config, *size).to(device)

    def step(index: int) -> float:
        synchronize(device)
        started = time.perf_counter()
        loss, _ = flow_matching_loss(model, batch, TimestepSampling(), torch.Generator().manual_seed(index),
                                     autocast_dtype=autocast)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - started

    try:
        warmup = step(0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        weights = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None
        steps = [step(index + 1) for index in range(args.steps)]
        record.update(warmup_seconds=warmup, step_seconds=steps, seconds_per_step=statistics.median(steps),
                      minutes_50=None, tflops=None, weights_gib=weights, **memory(device))
    except torch.cuda.OutOfMemoryError as error:
        record.update(error=f"out of memory{' under the cap' if config.cap_gib else ''}: {str(error)[:120]}")
    return record


def step_cache_timing(model, conditioning: Conditioning, steps: int, device: torch.device, dtype: torch.dtype,
                      full_step: float) -> dict:
    """Seconds of a skipped step (embedding + head only), and 50-step projections for a few skip shares.

    With random weights the number of steps the cache would skip means nothing, so the projection
    assumes shares of skipped steps instead of measuring them.
    """
    cache = StepCache(model, FULL_STEPS, threshold=math.inf, warmup_steps=1)
    skipped = timed_steps(cache, conditioning, steps + 1, device, dtype)[1:]
    skip_step = statistics.median(skipped)
    projections = {f"minutes_50_skip_{round(share * 100)}pct":
                   (round(FULL_STEPS * (1 - share)) * full_step + round(FULL_STEPS * share) * skip_step) / 60
                   for share in SKIP_SHARES}
    return {"skipped_step_seconds": skip_step, **projections}


def swap_count_for_cap(model, cap_gib: float, reserve_gib: float) -> int:
    """Blocks to swap so the weights fit ``cap_gib - reserve_gib``."""
    block_bytes = [module_bytes(block) for block in transformer_blocks(model)]
    other = module_bytes(model) - sum(block_bytes)
    return blocks_to_swap_for_budget(block_bytes, other, int((cap_gib - reserve_gib) * GIB))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU"


# -- driver ---------------------------------------------------------------------------------------


def markdown(records: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Device: {records[0]['device'] if records else '?'}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
        f"{args.size} transformer, {args.frames} frames x {args.height} x {args.width} per modality, CFG, "
        f"{args.steps} timed steps after 1 warm-up. Output dev: one forward against the bf16 row's.",
        "",
        "| config | what | blocks swapped | s/step (CFG) | 50 steps (min) | TFLOPS | peak alloc GiB | "
        "peak reserved GiB | weights GiB | output dev (rel L2 / max abs) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "seconds_per_step" not in r:
            lines.append(f"| {r['config']} | {r['description']} | | | | | | | | | {r.get('error', '')} |")
            continue
        notes = []
        if r.get("cap_gib"):
            notes.append(f"cap {r['cap_gib']} GiB")
        if "skipped_step_seconds" in r:
            notes.append(f"skipped step {r['skipped_step_seconds']:.2f} s; 50 steps with 30% / 50% skipped: "
                         f"{r['minutes_50_skip_30pct']:.2f} / {r['minutes_50_skip_50pct']:.2f} min")
        notes.append(f"warm-up {r['warmup_seconds']:.0f} s")
        if "train_size" in r:
            notes.append("s/step is one training step at {} x {} x {}".format(*r["train_size"]))
        fmt = lambda key, digits=1: f"{r[key]:.{digits}f}" if r.get(key) is not None else "-"  # noqa: E731
        lines.append(f"| {r['config']} | {r['description']} | {r['blocks_swapped']} | {r['seconds_per_step']:.2f} | "
                     f"{fmt('minutes_50', 2)} | {fmt('tflops', 0)} | {fmt('peak_allocated_gib')} | "
                     f"{fmt('peak_reserved_gib')} | {fmt('weights_gib')} | {deviation_cell(r)} | {'; '.join(notes)} |")
    return "\n".join(lines)


def deviation_cell(record: dict) -> str:
    if "output_rel_l2" not in record:
        return "-"
    return f"{record['output_rel_l2']:.2g} / {record['output_max_abs']:.2g}"


def worker_command(name: str, args: argparse.Namespace, output: Path, probe: Path) -> list[str]:
    return [sys.executable, __file__, "--worker", name, "--json", str(output), "--probe", str(probe),
            "--device", args.device, "--size", args.size, "--frames", str(args.frames), "--height",
            str(args.height), "--width", str(args.width), "--steps", str(args.steps), "--reserve-gib",
            str(args.reserve_gib), "--train-frames", str(args.train_frames), "--train-height",
            str(args.train_height), "--train-width", str(args.train_width), "--train-reserve-gib",
            str(args.train_reserve_gib), "--offload-reserve-gib", str(args.offload_reserve_gib)]


def run_worker(name: str, args: argparse.Namespace, reference: torch.Tensor | None) -> tuple[dict, torch.Tensor | None]:
    """Run configuration ``name`` in a fresh process; returns its record and its probe output."""
    with tempfile.TemporaryDirectory() as scratch:
        output, probe = Path(scratch) / "record.json", Path(scratch) / "probe.pt"
        try:
            done = subprocess.run(worker_command(name, args, output, probe), timeout=args.timeout)
            failure = None if done.returncode == 0 else f"worker exited with {done.returncode}"
        except subprocess.TimeoutExpired:
            failure = f"took more than {args.timeout} s"
        if output.is_file():
            record = json.loads(output.read_text())
        else:
            record = {"config": name, "description": configs()[name].description, "error": failure}
        probe_output = torch.load(probe, weights_only=True) if probe.is_file() else None
    if probe_output is not None and reference is not None:
        record.update(deviation(probe_output, reference))
    return record, probe_output


def drive(args: argparse.Namespace) -> list[dict]:
    """Every requested configuration in turn (skipped ones with the reason); records also go to ``--json``."""
    table = configs()
    names = args.configs.split(",") if args.configs else list(table)
    unknown = [name for name in names if name not in table]
    if unknown:
        raise SystemExit(f"Unknown configurations {unknown}; --list shows them.")
    device = torch.device(args.device)
    records = []
    reference = None  # the bf16 row's probe output
    for name in names:
        started = time.perf_counter()
        reason = unavailable(table[name], device)
        if reason:
            record = {"config": name, "description": table[name].description, "error": f"skipped: {reason}"}
        else:
            record, probe = run_worker(name, args, reference)
            if name == "bf16":
                reference = probe
        records.append(record)
        print(f"{name}: {time.perf_counter() - started:.0f} s, "
              f"{record.get('seconds_per_step', record.get('error'))}", file=sys.stderr)
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(json.dumps(record) + "\n")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", help="comma-separated configuration names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the configurations and exit")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", choices=("14b", "small"), default="14b")
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720, help="per modality; the fused video is twice as wide")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up step")
    parser.add_argument("--train-frames", type=int, default=25, help="clip size of the training rows")
    parser.add_argument("--train-height", type=int, default=320)
    parser.add_argument("--train-width", type=int, default=480, help="per modality")
    parser.add_argument("--train-reserve-gib", type=float, default=10.0,
                        help="what capped training rows keep free for activations, the LoRA and its AdamW state")
    parser.add_argument("--reserve-gib", type=float, default=6.0, help="activation reserve for capped block swap")
    parser.add_argument("--offload-reserve-gib", type=float, default=17.0,
                        help="the same for the training row at the job's size with offloaded activations")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per configuration")
    parser.add_argument("--json", type=Path, help="append one JSON record per configuration to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.list:
        width = max(map(len, configs()))
        for name, config in configs().items():
            print(f"{name:{width}}  {config.description}")
        return
    if args.worker:
        record = run_config(configs()[args.worker], args)
        args.json.write_text(json.dumps(record))
        return
    print(markdown(drive(args), args))


if __name__ == "__main__":
    main()
