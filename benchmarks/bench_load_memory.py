"""Peak resident memory while loading a ~1 GB Wan transformer from each checkpoint layout.

Writes a random-weight Wan I2V-shaped transformer of 0.49B parameters (bf16: 0.98 GB) once, as
a diffusers folder (sharded), a ComfyUI bf16 single file, an fp8_scaled and an fp8_e4m3fn file.
Then each load runs in a fresh Python process that reports its peak resident set size (VmHWM
from /proc/self/status) before and after loading. Prints a markdown table.

    python benchmarks/bench_load_memory.py [--workdir .bench/load_memory] [--keep]

The files are read from the page cache (just written), so the seconds are not disk speed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

# Wan2.1 I2V layout (36 input channels, 1280-wide image conditioning) at 1.3B width, 9 blocks.
BENCH_TRANSFORMER = dict(
    num_attention_heads=12, attention_head_dim=128, in_channels=36, out_channels=16, text_dim=4096,
    freq_dim=256, ffn_dim=8960, num_layers=9, image_dim=1280, added_kv_proj_dim=1536,
)
# (label, path under the work dir, loader, load dtype)
CASES = (
    ("diffusers folder, bf16 (3 shards)", "diffusers", "ours", "bfloat16"),
    ("diffusers folder via diffusers `from_pretrained` (reference)", "diffusers", "diffusers", "bfloat16"),
    ("ComfyUI single file, bf16", "comfy_bf16.safetensors", "ours", "bfloat16"),
    ("ComfyUI single file, bf16, loaded as fp32", "comfy_bf16.safetensors", "ours", "float32"),
    ("ComfyUI fp8_scaled (block Linears stay fp8)", "comfy_fp8_scaled.safetensors", "ours", "bfloat16"),
    ("ComfyUI fp8_e4m3fn (block Linears stay fp8)", "comfy_fp8_e4m3fn.safetensors", "ours", "bfloat16"),
)


def memory_kb() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process, in kB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def write_checkpoints(workdir: Path) -> None:
    """Build the random bf16 model without a float32 copy and save it in every layout."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from fourdnex_core.writing.single_files import save_transformer_single_file

    with init_empty_weights():
        model = WanTransformer3DModel(**BENCH_TRANSFORMER)
    model.to(torch.bfloat16).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    model.save_pretrained(workdir / "diffusers" / "transformer", max_shard_size="400MB")
    save_transformer_single_file(model, workdir / "comfy_bf16.safetensors")
    save_transformer_single_file(model, workdir / "comfy_fp8_scaled.safetensors", fp8="scaled")
    save_transformer_single_file(model, workdir / "comfy_fp8_e4m3fn.safetensors", fp8="e4m3fn")


def measure(path: Path, loader: str, dtype_name: str) -> dict[str, float]:
    """Load once in this (fresh) process; memory before and after, and the seconds taken."""
    from diffusers import WanTransformer3DModel

    from fourdnex_core.loading.transformer_loader import load_transformer

    dtype = getattr(torch, dtype_name)
    before = memory_kb()
    started = time.perf_counter()
    if loader == "ours":
        model = load_transformer(path, dtype=dtype)
    else:
        model = WanTransformer3DModel.from_pretrained(path / "transformer", torch_dtype=dtype)
    seconds = time.perf_counter() - started
    after = memory_kb()
    # Memory-mapped loaders (diffusers) page weights in on first use: read every byte once.
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    checksum = sum(t.view(torch.uint8).max().item() for t in model.state_dict().values() if t.numel() > 1)
    touched = memory_kb()
    return {
        "before_kb": before["VmRSS"],
        "peak_kb": after["VmHWM"],
        "peak_touched_kb": touched["VmHWM"],
        "seconds": seconds,
        "weights_bytes": weights,
        "checksum": checksum,
    }


def size_on_disk(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*.safetensors")]
    return sum(p.stat().st_size for p in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".bench/load_memory"))
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints (2.9 GB) for the next run")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=3, metavar=("PATH", "LOADER", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    if args.write:  # in a child process, so the writer's memory is gone before measuring
        write_checkpoints(args.write)
        return
    if args.measure:
        path, loader, dtype_name = args.measure
        print(json.dumps(measure(Path(path), loader, dtype_name)))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    if not (args.workdir / "comfy_fp8_e4m3fn.safetensors").is_file():
        subprocess.run([sys.executable, __file__, "--write", str(args.workdir)], check=True)
    rows = []
    for label, relative, loader, dtype_name in CASES:
        path = args.workdir / relative
        result = subprocess.run(
            [sys.executable, __file__, "--measure", str(path), loader, dtype_name],
            check=True, capture_output=True, text=True,
        )
        numbers = json.loads(result.stdout.strip().splitlines()[-1])
        file_mb = size_on_disk(path) / 2**20
        before_mb = numbers["before_kb"] / 1024
        peak_mb, touched_mb = numbers["peak_kb"] / 1024, numbers["peak_touched_kb"] / 1024
        rows.append(
            f"| {label} | {file_mb:.0f} | {numbers['weights_bytes'] / 2**20:.0f} | {before_mb:.0f} | {peak_mb:.0f} "
            f"| {touched_mb:.0f} | {(touched_mb - before_mb) / file_mb:.2f} | {touched_mb / file_mb:.2f} "
            f"| {numbers['seconds']:.1f} |"
        )
    print("| layout | file MB | loaded weights MB | RSS before load MB | peak RSS after load MB "
          "| peak RSS after reading all weights MB | (peak - before) / file | peak / file | load seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if not args.keep:
        shutil.rmtree(args.workdir)


if __name__ == "__main__":
    main()
