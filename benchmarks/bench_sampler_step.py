"""Time per sampler step: the 4DNeX loop against diffusers' stock WanImageToVideoPipeline.

Both run the same small random-weight Wan transformer at the same token count with CFG: ours on
a width-fused latent (RGB | XYZ, shared RoPE, domain embeddings), the stock pipeline on an
ordinary video as wide as the fused one. Prints a markdown table.

    python benchmarks/bench_sampler_step.py [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel

from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from fourdnex_core.representation import condition_mask, latent_frames
from fourdnex_core.sampler import Conditioning, SamplingSettings, sample
from fourdnex_core.transformer import FourDNeXTransformer3DModel

SMALL_TRANSFORMER = dict(
    num_attention_heads=4, attention_head_dim=64, in_channels=36, out_channels=16, text_dim=64, freq_dim=256,
    ffn_dim=1024, num_layers=4, image_dim=64, added_kv_proj_dim=256,
)
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])


def step_times(run, steps: int) -> list[float]:
    """Run ``run(record)`` where ``record()`` is called at the end of each step; return step durations."""
    stamps = [time.perf_counter()]
    run(lambda: stamps.append(time.perf_counter()))
    durations = [b - a for a, b in zip(stamps, stamps[1:])]
    assert len(durations) == steps, durations
    return durations[1:]  # the first step includes warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128, help="per modality; the fused video is twice as wide")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    stock_model = WanTransformer3DModel(**SMALL_TRANSFORMER).eval()
    ours = FourDNeXTransformer3DModel(**SMALL_TRANSFORMER).eval()
    ours.load_state_dict(stock_model.state_dict(), strict=False)
    text = torch.randn(1, 512, SMALL_TRANSFORMER["text_dim"])
    negative = torch.randn(1, 512, SMALL_TRANSFORMER["text_dim"])
    image = torch.randn(1, 257, SMALL_TRANSFORMER["image_dim"])
    frames, height, wide = latent_frames(args.frames), args.height // 8, 2 * args.width // 8
    tokens = frames * (height // 2) * (wide // 2)

    condition = torch.cat([condition_mask(args.frames, height, wide), torch.randn(1, 16, frames, height, wide)], 1)
    conditioning = Conditioning(condition=condition, prompt_embeds=text, negative_prompt_embeds=negative,
                                image_embeds=image)
    settings = SamplingSettings(num_inference_steps=args.steps, guidance_scale=5.0)

    def run_ours(record):
        with torch.no_grad():
            sample(ours, conditioning, settings, on_step=lambda *_: record(), progress=False)

    vae = AutoencoderKLWan(**TINY_VAE).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    # The stock pipeline takes either an image or image embeddings, and needs the image for its
    # condition latent, so it gets a small CLIP vision encoder of the same width (run before the loop).
    image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=SMALL_TRANSFORMER["image_dim"], intermediate_size=128,
                                                     num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                                                     image_size=224)).eval()
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, image_encoder=image_encoder,
                                   image_processor=CLIPImageProcessor(), transformer=stock_model, vae=vae,
                                   scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    picture = torch.rand(1, 3, args.height, 2 * args.width)

    def run_stock(record):
        def callback(pipeline, step, timestep, kwargs):
            record()
            return {}

        pipe(image=picture, prompt_embeds=text, negative_prompt_embeds=negative,
             height=args.height, width=2 * args.width, num_frames=args.frames, num_inference_steps=args.steps,
             guidance_scale=5.0, output_type="latent", callback_on_step_end=callback)

    results = {}
    for name, run in (("stock WanImageToVideoPipeline", run_stock), ("4DNeX sampler", run_ours)) * 2:
        results.setdefault(name, []).extend(step_times(run, args.steps))  # two rounds, interleaved
    stock_median = statistics.median(results["stock WanImageToVideoPipeline"])
    print(f"Small Wan transformer ({SMALL_TRANSFORMER['num_layers']} blocks, width "
          f"{SMALL_TRANSFORMER['num_attention_heads'] * SMALL_TRANSFORMER['attention_head_dim']}), "
          f"{args.frames} frames, {tokens} tokens, CFG, {args.threads} CPU threads, torch {torch.__version__}\n")
    print("| loop | median s/step | min s/step | ratio to stock |")
    print("|---|---|---|---|")
    for name, times in results.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.4f} | {min(times):.4f} | {median / stock_median:.3f} |")


if __name__ == "__main__":
    main()
