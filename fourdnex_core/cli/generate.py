"""``fourdnex generate IMAGE --out DIR``: one image to RGB + XYZ videos and a scene file."""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from ..atomic_write import atomic_path, check_output_folder
from ..image_io import load_image
from ..devices import DTYPES, resolve_device, resolve_dtype
from ..geometry.point_maps import PointMaps, scene_from
from ..job_size import check_job_fits
from ..loading.detect import inspect_transformer
from ..model_set import ModelLocations, load_pipeline
from ..image_io import RESIZE_MODES, generation_size
from ..pipeline import GenerationResult
from ..presets import PRESETS, negative_prompt_text
from ..representation import check_video_size, xyz_image
from ..sampler import SamplingSettings
from ..scene_file import save_scene
from ..schedulers import SAMPLERS, SCHEDULES
from ..video_io import write_video
from .memory_args import add_memory_arguments, embedding_cache, memory_options

OUTPUT_FILES = ("rgb.mp4", "xyz.mp4", "scene.npz", "run.json")
VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "peft", "safetensors", "kornia", "numpy")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model-location options shared by the commands that load weights."""
    group = parser.add_argument_group("model locations (a diffusers folder or a ComfyUI models/ folder)")
    group.add_argument("--models", type=Path, help="Wan2.1-I2V-14B-480P-Diffusers folder or ComfyUI models/ folder")
    for name in ("transformer", "vae", "text-encoder", "clip-vision"):
        group.add_argument(f"--{name}", type=Path, help=f"{name.replace('-', ' ')} file or folder (overrides --models)")
    group.add_argument("--tokenizer", type=Path, help="UMT5 tokenizer folder, for text-encoder files without one")
    group.add_argument("--lora", type=Path, help="4DNeX LoRA file, or the released folder "
                       "(pytorch_lora_weights.safetensors + learnable_domain_embeddings.pt)")
    group.add_argument("--domain-embeddings", type=Path, help="learnable_domain_embeddings.pt (if not beside the LoRA)")
    group.add_argument("--lora-strength", type=float,
                       help="1.0 = the LoRA's training scale (the release's fuse at 0.5); default: the preset's")


def model_locations(args: argparse.Namespace) -> ModelLocations:
    return ModelLocations(
        root=args.models, transformer=args.transformer, vae=args.vae, text_encoder=args.text_encoder,
        clip_vision=args.clip_vision, tokenizer=args.tokenizer, lora=args.lora,
        domain_embeddings=args.domain_embeddings,
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("generate", help="generate a 4D scene from one image",
                                   description="Generate RGB and XYZ videos (a 4D scene) from one image.")
    parser.add_argument("image", type=Path, help="input image (PNG, JPEG, WebP)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace an earlier run's {', '.join(OUTPUT_FILES)} in --out (refused without it)")
    add_model_arguments(parser)
    add_generation_arguments(parser)
    return parser


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Prompt, size and sampler options (shared with ``fourdnex demo``). The options left out take
    the ``--preset``'s value (:func:`apply_preset`)."""
    group = parser.add_argument_group("generation (unset options take the preset's value)")
    group.add_argument("--preset", choices=tuple(PRESETS), default="release",
                       help="release: exactly the 4DNeX release's call (49 frames, 480x720 area, 50 UniPC steps, "
                            "CFG 5 against the empty negative, seed 42); fast: 9 frames at 368x240, 20 steps")
    group.add_argument("--prompt", default="", help="text description of the scene")
    group.add_argument("--negative-prompt", help="CFG negative prompt; the release's is empty (\"\"); "
                       "'wan' gives Wan2.1's default negative prompt")
    group.add_argument("--no-pointmap-style", action="store_true", help="do not append ' POINTMAP_STYLE.' to the prompt")
    group.add_argument("--frames", type=int, help="number of frames, 4k+1 (release: 49)")
    group.add_argument("--height", type=int, help="frame height per modality, multiple of 16 (release: 480)")
    group.add_argument("--width", type=int, help="frame width per modality, multiple of 16 (release: 720)")
    group.add_argument("--resize", choices=RESIZE_MODES,
                       help="area: keep the image's aspect ratio at the area height x width, as the release "
                            "(a square image gives 576x576); crop: cover height x width and centre-crop; "
                            "stretch: exactly height x width")
    group.add_argument("--steps", type=int, help="denoising steps (release: 50)")
    group.add_argument("--cfg", type=float, help="classifier-free guidance scale (release: 5; 1 skips the negative)")
    group.add_argument("--seed", type=int, help="noise seed (release: 42)")
    group.add_argument("--shift", type=float, help="flow shift (Wan 480p and the release: 3.0)")
    group.add_argument("--sampler", choices=SAMPLERS, help="release: unipc")
    group.add_argument("--schedule", choices=SCHEDULES,
                       help="release: diffusers 0.34's flow sigmas, what the release ran; diffusers: those of "
                            "diffusers >= 0.37")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda when available)")
    group.add_argument("--precision", choices=("auto", *DTYPES), default="auto",
                       help="auto: bf16 on CUDA, fp32 on CPU (the text encoder: bf16 on CPU unless its file is fp32)")
    group.add_argument("--fps", type=float, default=24.0, help="frame rate of the written videos")
    add_memory_arguments(parser)


def write_outputs(out: Path, result: GenerationResult, settings: dict, fps: float) -> None:
    """rgb.mp4, xyz.mp4 (XYZ as colours), scene.npz and run.json in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rgb = result.rgb.cpu()
    xyz = result.xyz.cpu().float()
    write_video(out / "rgb.mp4", rgb.numpy(), fps)
    write_video(out / "xyz.mp4", xyz_image(xyz).numpy(), fps)
    save_scene(scene_from(PointMaps(xyz=xyz, rgb=rgb)), out / "scene.npz")
    with atomic_path(out / "run.json") as temporary:
        temporary.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run_settings(args: argparse.Namespace, result: GenerationResult, seconds: float) -> dict:
    """Every setting of the run plus the versions that made it (run.json)."""
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
                if key not in ("handler",)}
    settings["prompt_used"] = result.prompt
    settings["device_used"] = result.device
    settings["precision_used"] = result.dtype
    settings["size_used"] = list(result.rgb.shape[1:3])  # [height, width] per modality, after --resize
    settings["seconds"] = round(seconds, 2)
    versions = {"fourdnex": metadata.version("comfyui-4dnex"), "python": platform.python_version()}
    versions.update({name: metadata.version(name) for name in VERSIONED_PACKAGES})
    settings["versions"] = versions
    return settings


def apply_preset(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the generation options left unset from ``args.preset`` (explicit ones win) and spell a
    named negative prompt out, in place, so run.json records what ran."""
    preset = PRESETS[args.preset]
    for name in ("frames", "height", "width", "resize", "steps", "cfg", "shift", "sampler", "schedule", "seed",
                 "negative_prompt", "lora_strength"):
        if getattr(args, name, None) is None:
            setattr(args, name, getattr(preset, name))
    args.negative_prompt = negative_prompt_text(args.negative_prompt)
    return args


def generate(args: argparse.Namespace, locations: ModelLocations,
             before_loading: Callable[[], None] | None = None) -> GenerationResult:
    """Validate every setting, then load the models and generate. Everything the arguments alone
    can show wrong (sizes, sampler settings, fps, LoRA strength, a job too big for the machine, a
    missing model file, an unreadable image) is refused before any model loads; ``before_loading``
    runs last before loading (the output folder check)."""
    apply_preset(args)
    check_video_size(args.frames, args.height, args.width)
    settings = SamplingSettings(num_inference_steps=args.steps, guidance_scale=args.cfg, flow_shift=args.shift,
                                sampler=args.sampler, seed=args.seed, schedule=args.schedule)
    check_output_settings(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.precision, device)
    image = load_image(args.image)
    height, width = generation_size(image.height, image.width, args.height, args.width, args.resize)
    config = inspect_transformer(locations.source("transformer")).config
    check_job_fits(args.frames, height, width, device=device, dtype=dtype, ffn_dim=config["ffn_dim"],
                   inner_dim=config["num_attention_heads"] * config["attention_head_dim"])
    if before_loading is not None:
        before_loading()
    pipeline = load_pipeline(locations, device=device, dtype=dtype, lora_strength=args.lora_strength,
                             memory=memory_options(args, device), embedding_cache=embedding_cache(args),
                             text_encoder_dtype=args.precision)
    return pipeline(image, args.prompt, negative_prompt=args.negative_prompt, num_frames=args.frames,
                    height=args.height, width=args.width, resize=args.resize, settings=settings,
                    pointmap_style=not args.no_pointmap_style)


def check_output_settings(args: argparse.Namespace) -> None:
    """The settings the sampler does not see: the video frame rate and the LoRA strength."""
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise ValueError(f"--fps must be a positive number, got {args.fps}.")
    if not math.isfinite(args.lora_strength):
        raise ValueError(f"--lora-strength must be a finite number, got {args.lora_strength}; 1.0 is the LoRA's "
                         "training scale.")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = generate(args, model_locations(args),
                      before_loading=lambda: check_output_folder(args.out, OUTPUT_FILES, overwrite=args.overwrite))
    write_outputs(args.out, result, run_settings(args, result, time.perf_counter() - start), args.fps)
    print(f"wrote {args.out}/rgb.mp4, xyz.mp4, scene.npz, run.json ({result.rgb.shape[0]} frames)")
    return 0
