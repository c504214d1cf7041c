"""How far each low-VRAM option moves the output, measured on the CPU with small random-weight models.

Every option runs the same job as the plain path and is compared with it: the final wide latent
of a seeded sampling run (transformer options) or the decoded video (VAE tiling). Exact options
must show 0; approximate ones report their deviation. Prints markdown tables.

    python benchmarks/bench_lowvram_cpu.py [--steps 50] [--threads 2]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from torch import nn

from fourdnex_core.image_io import fit_image, image_to_tensor, load_image
from fourdnex_core.loading.vae_loader import load_vae
from fourdnex_core.lowvram import (
    BlockSwap,
    StepCache,
    compile_blocks,
    enable_fp8_matmul,
    quantize_block_linears,
    set_attention_backend,
    vae_tiling,
)
from fourdnex_core.sampler import Conditioning, SamplingSettings, sample
from fourdnex_core.transformer import FourDNeXTransformer3DModel

# Sides that are multiples of 16 (fp8 matmuls need them), 4 blocks.
SMALL_TRANSFORMER = dict(num_attention_heads=4, attention_head_dim=32, in_channels=36, out_channels=16, text_dim=64,
                         freq_dim=64, ffn_dim=256, num_layers=4, image_dim=64, added_kv_proj_dim=128)
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])
EXAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "fourdnex_core" / "assets" / "example.png"
LATENT = (1, 16, 4, 8, 16)  # 13 frames of 64 x 128 (two 64 x 64 halves)


def small_model() -> FourDNeXTransformer3DModel:
    torch.manual_seed(0)
    model = FourDNeXTransformer3DModel(**SMALL_TRANSFORMER).eval()
    with torch.no_grad():
        model.domain_embeddings.normal_(0, 0.5)
    return model


def conditioning() -> Conditioning:
    generator = torch.Generator().manual_seed(1)
    text, image = SMALL_TRANSFORMER["text_dim"], SMALL_TRANSFORMER["image_dim"]
    return Conditioning(condition=torch.randn(1, 20, *LATENT[2:], generator=generator),
                        prompt_embeds=torch.randn(1, 512, text, generator=generator),
                        negative_prompt_embeds=torch.randn(1, 512, text, generator=generator),
                        image_embeds=torch.randn(1, 257, image, generator=generator))


@torch.no_grad()
def run(transformer: nn.Module, steps: int) -> torch.Tensor:
    """The final wide latent [1, 16, f, h, 2w] of a seeded CFG sampling run."""
    return sample(transformer, conditioning(), SamplingSettings(num_inference_steps=steps), progress=False)


def deviation(output: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, float]:
    """(max |diff|, mean |diff|, ||diff|| / ||reference||)."""
    difference = (output - reference).float()
    return difference.abs().max().item(), difference.abs().mean().item(), (difference.norm() / reference.norm()).item()


def transformer_rows(steps: int) -> list[tuple[str, str, torch.Tensor]]:
    """(option, note, final latent) per option, the plain path first."""
    variants: list[tuple[str, Callable[[nn.Module], nn.Module]]] = [
        ("plain (fp32, SDPA)", lambda m: m),
        ("block swap, 2 of 4 blocks (CPU -> CPU copies)", lambda m: (BlockSwap(m, 2, "cpu"), m)[1]),
        ("block swap, all 4 blocks, no prefetch", lambda m: (BlockSwap(m, 4, "cpu", prefetch=False), m)[1]),
        ("torch.compile of the blocks (eager backend)", lambda m: (compile_blocks(m, "cpu", backend="eager"), m)[1]),
        ("attention: math (reference kernel)", lambda m: (set_attention_backend(m, "math", "cpu"), m)[1]),
        ("fp8 weights (e4m3fn, per-tensor scale, upcast)", lambda m: (quantize_block_linears(m), m)[1]),
        ("fp8 matmul, per-token activation scales", lambda m: (quantize_block_linears(m),
                                                               enable_fp8_matmul(m, "cpu", activation_scaling="row"),
                                                               m)[2]),
        ("fp8 matmul, per-tensor activation scales", lambda m: (quantize_block_linears(m),
                                                                enable_fp8_matmul(m, "cpu",
                                                                                  activation_scaling="tensor"), m)[2]),
    ]
    rows = []
    for name, prepare in variants:
        rows.append((name, "", run(prepare(small_model()), steps)))
    for threshold in (0.05, 0.1, 0.2, 0.3):
        cache = StepCache(small_model(), steps, threshold=threshold)
        latent = run(cache, steps)
        rows.append((f"step cache, threshold {threshold}", f"{cache.stats.skipped_count} of {steps} steps skipped",
                     latent))
    return rows


def example_video(frames: int, height: int, width: int) -> torch.Tensor:
    """The example picture, fitted to height x width, as a still video [1, 3, frames, H, W] in [-1, 1]."""
    picture = fit_image(image_to_tensor(load_image(EXAMPLE_IMAGE)), height, width, mode="crop")  # [3, H, W] in [0, 1]
    return (picture * 2 - 1)[None, :, None].expand(1, 3, frames, height, width).contiguous()


@torch.no_grad()
def vae_rows(vae: AutoencoderKLWan, height: int, width: int,
             tilings: list[tuple[int, int]]) -> list[tuple[str, torch.Tensor]]:
    """Encode the example picture (untiled), then decode it untiled and with each (tile, overlap)."""
    latent = vae.encode(example_video(5, height, width)).latent_dist.mode()
    rows = [("untiled", vae.decode(latent, return_dict=False)[0])]
    for tile, overlap in tilings:
        with vae_tiling(vae, tile_size=tile, overlap=overlap):
            rows.append((f"tiles {tile} px, overlap {overlap} px", vae.decode(latent, return_dict=False)[0]))
    return rows


def print_transformer_table(rows: list[tuple[str, str, torch.Tensor]]) -> None:
    reference = rows[0][2]
    print("| option | max abs dev | mean abs dev | relative L2 dev | notes |")
    print("|---|---|---|---|---|")
    for name, note, latent in rows:
        worst, mean, relative = deviation(latent, reference)
        print(f"| {name} | {worst:.3g} | {mean:.3g} | {relative:.3g} | {note} |")
    print(f"\n(final latent: mean |x| = {reference.abs().mean().item():.3g})\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vae", type=Path, help="a real Wan VAE (file or folder) for the tiling rows; "
                        "default: a tiny random-weight VAE")
    parser.add_argument("--vae-height", type=int, default=96)
    parser.add_argument("--vae-width", type=int, default=288, help="the fused width (RGB | XYZ)")
    parser.add_argument("--tiles", default="64:16,64:32,96:32", help="tile:overlap pixel pairs to compare")
    parser.add_argument("--skip-transformer", action="store_true", help="only the VAE rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if not args.skip_transformer:
        print(f"Transformer: {SMALL_TRANSFORMER['num_layers']} blocks, width "
              f"{SMALL_TRANSFORMER['num_attention_heads'] * SMALL_TRANSFORMER['attention_head_dim']}, random weights; "
              f"latent {list(LATENT)} ({LATENT[2] * LATENT[3] * LATENT[4] // 4} tokens), {args.steps} UniPC steps, "
              f"CFG 5, fp32, torch {torch.__version__}, {args.threads} CPU threads.\n")
        print_transformer_table(transformer_rows(args.steps))

    if args.vae is not None:
        vae, what = load_vae(args.vae), f"the Wan VAE from {args.vae}"
    else:
        torch.manual_seed(0)
        vae, what = AutoencoderKLWan(**TINY_VAE).eval(), "a tiny random-weight Wan VAE"
    tilings = [tuple(int(v) for v in pair.split(":")) for pair in args.tiles.split(",")]
    decoded = vae_rows(vae, args.vae_height, args.vae_width, tilings)
    print(f"VAE decode with {what}: the example picture as 5 still frames of {args.vae_height} x {args.vae_width}, "
          "encoded untiled, decoded untiled and tiled:\n")
    print("| decode | max abs dev | mean abs dev | relative L2 dev |")
    print("|---|---|---|---|")
    for name, video in decoded:
        worst, mean, relative = deviation(video, decoded[0][1])
        print(f"| {name} | {worst:.3g} | {mean:.3g} | {relative:.3g} |")


if __name__ == "__main__":
    main()
