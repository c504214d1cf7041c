"""``fourdnex-train prepare``: clips -> per-clip cache files the trainer reads.

For every clip of the dataset (:mod:`fourdnex_train.data_layout`): process it to the training size
(:func:`fourdnex_train.pointmaps.process_clip`), then encode once and cache (:mod:`fourdnex_train.cache`):
the RGB and XYZ video latents (Wan VAE, each half on its own), the condition latent exactly as
inference builds it (:func:`fourdnex_core.conditioning.encode_condition`), the CLIP embedding of
the first frame and the UMT5 embedding of the caption with the ``POINTMAP_STYLE.`` suffix.

**The condition.** By default (``condition_xyz = "init"``) the XYZ half of the condition frame
is the sloped-plane guess of :func:`fourdnex_core.representation.xyz_init_map`, exactly what
inference feeds, with the mask at 0.5 on that half ("the init is only a guess", METHOD.md):
the model learns to generate the true first XYZ frame from the guess. ``"first_frame"`` uses
the true first XYZ frame instead (a reconstruction-style variant; the mask is unchanged).

Resumable: a clip whose cache file exists with the same settings fingerprint is skipped, and
the encoders are only loaded when some clip needs encoding. A clip that cannot be read or
processed is reported and skipped; the report goes to ``<cache_dir>/prepare_report.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fourdnex_core.atomic_write import atomic_path
from fourdnex_core.conditioning import encode_condition
from fourdnex_core.encoders import encode_image, encode_prompt, with_pointmap_style
from fourdnex_core.loading.clip_vision_loader import load_clip_vision
from fourdnex_core.loading.text_encoder_loader import load_text_encoder
from fourdnex_core.loading.vae_loader import load_vae
from fourdnex_core.lowvram import prepare_vae
from fourdnex_core.representation import xyz_init_map
from fourdnex_core.vae_io import encode_video
from fourdnex_train.cache import CachedClip, cache_path, fingerprint, is_cached, write_cached_clip
from fourdnex_train.config import DataConfig, MemoryConfig, ModelsConfig, TrainConfig
from fourdnex_train.data_layout import ClipSource, find_clips
from fourdnex_train.devices import dtype_named, resolve_device, weight_dtype
from fourdnex_train.pointmaps import ProcessedClip, process_clip

logger = logging.getLogger(__name__)

REPORT_FILE = "prepare_report.csv"
# Errors that mean "this clip's data is bad": reported, the run goes on.
CLIP_ERRORS = (ValueError, FileNotFoundError, OSError, KeyError, IndexError, RuntimeError)


@dataclasses.dataclass
class Encoders:
    """The frozen encoders prepare needs, on ``device``."""

    vae: Any
    text_encoder: torch.nn.Module
    tokenizer: Any
    image_encoder: torch.nn.Module
    image_processor: Any
    device: torch.device


def load_encoders(models: ModelsConfig, device: torch.device, memory: MemoryConfig | None = None) -> Encoders:
    """Load the Wan VAE (fp32; tiled with ``memory.vae_tiling``), UMT5 and CLIP vision
    (``models.dtype`` on GPU, fp32 on CPU)."""
    dtype = weight_dtype(models.dtype, device)
    vae = load_vae(models.source("vae"), dtype=torch.float32, device=device)
    if memory is not None:
        prepare_vae(vae, memory.low_vram_options())
    text_encoder, tokenizer = load_text_encoder(models.source("text_encoder").path,
                                                tokenizer_path=models.tokenizer, dtype=dtype, device=device)
    image_encoder, image_processor = load_clip_vision(models.source("clip_vision").path, dtype=dtype,
                                                      device=device)
    return Encoders(vae, text_encoder, tokenizer, image_encoder, image_processor, device)


@dataclasses.dataclass
class PrepareReport:
    """One row per clip: ``(name, status, detail)`` with status prepared / skipped / failed."""

    rows: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    def add(self, name: str, status: str, detail: str = "") -> None:
        self.rows.append((name, status, detail))

    def names(self, status: str) -> list[str]:
        return [name for name, row_status, _ in self.rows if row_status == status]

    def write_csv(self, path: Path) -> Path:
        with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["clip", "status", "detail"])
            writer.writerows(self.rows)
        return path

    def summary(self) -> str:
        counts = {status: len(self.names(status)) for status in ("prepared", "skipped", "failed")}
        lines = [f"{counts['prepared']} prepared, {counts['skipped']} skipped (already cached), "
                 f"{counts['failed']} failed."]
        lines += [f"  failed {name}: {detail}" for name, status, detail in self.rows if status == "failed"]
        return "\n".join(lines)


def cache_settings(data: DataConfig, models: ModelsConfig, memory: MemoryConfig | None = None) -> dict[str, Any]:
    """Every setting that changes a cache file's content (hashed into its fingerprint); VAE tiling
    only when on (tiled latents differ slightly), so caches made without it keep their fingerprint."""
    keys = ("layout", "num_frames", "height", "width", "frame_stride", "condition_xyz", "cache_dtype",
            "pointmap_style", "percentiles")
    settings = {key: getattr(data, key) for key in keys}
    settings["models"] = {key: str(getattr(models, key)) for key in ("root", "vae", "text_encoder", "clip_vision")}
    if memory is not None and memory.vae_tiling:
        settings["vae_tiling"] = [memory.vae_tile_size, memory.vae_tile_overlap]
    return settings


@torch.no_grad()
def encode_clip(clip: ProcessedClip, encoders: Encoders, data: DataConfig) -> CachedClip:
    """Encode a processed clip into its cache tensors (see :mod:`fourdnex_train.cache`)."""
    frames, height, width, _ = clip.rgb.shape
    rgb_video = clip.rgb.permute(3, 0, 1, 2)[None] * 2.0 - 1.0     # [1, 3, F, H, W] in [-1, 1]
    xyz_video = clip.xyz.permute(3, 0, 1, 2)[None].float()          # pixels (xyz+1)/2 -> VAE range: xyz itself
    rgb_latent = encode_video(encoders.vae, rgb_video, progress=False)[0]
    xyz_latent = encode_video(encoders.vae, xyz_video, progress=False)[0]
    first_xyz = xyz_init_map(height, width) if data.condition_xyz == "init" else clip.xyz[0]
    condition = encode_condition(encoders.vae, clip.rgb[0].permute(2, 0, 1), first_xyz, frames, progress=False)[0]
    image_embeds = encode_image(encoders.image_encoder, encoders.image_processor, clip.rgb[:1],
                                device="cpu", dtype=torch.float32)[0]
    prompt = with_pointmap_style(clip.caption, enabled=data.pointmap_style)
    prompt_embeds = encode_prompt(encoders.text_encoder, encoders.tokenizer, [prompt],
                                  device="cpu", dtype=torch.float32)[0]
    store = dtype_named(data.cache_dtype)
    return CachedClip(
        name=clip.name,
        rgb_latent=rgb_latent.cpu().to(store), xyz_latent=xyz_latent.cpu().to(store),
        condition=condition.cpu().to(store), image_embeds=image_embeds.to(store),
        prompt_embeds=prompt_embeds.to(store), xyz_center=clip.normalization.center.float().cpu(),
        metadata={
            "prompt": prompt, "xyz_scale": repr(clip.normalization.scale), "num_frames": str(frames),
            "height": str(height), "width": str(width), "source_frames": str(clip.source_frames),
            "padded": str(clip.padded).lower(),
        },
    )


def prepare_dataset(config: TrainConfig, encoders: Encoders | None = None, *, progress: bool = True) -> PrepareReport:
    """Process and cache every clip of ``config.data`` (module docstring); returns the report.

    ``encoders``: already loaded encoders (tests, notebooks); loaded from ``config.models`` on
    first need otherwise.
    """
    config.require("data.root", "data.cache_dir", command="prepare")
    data = config.data
    clips = find_clips(data.root, data.layout)
    settings = cache_settings(data, config.models, config.memory)
    report = PrepareReport()
    done = 0
    try:
        for clip in tqdm(clips, desc="Preparing clips", disable=not progress):
            encoders = _prepare_clip(clip, config, settings, encoders, report)
            done += 1
    except BaseException as error:
        # An error that stops the run (the encoders fail to load, Ctrl-C): the report still says
        # which clips were done and which were not reached.
        for clip in clips[done:]:
            report.add(clip.name, "failed", f"not prepared: the run stopped ({type(error).__name__}: {error})")
        raise
    finally:
        report_path = report.write_csv(Path(data.cache_dir) / REPORT_FILE)
    logger.info("Prepare: %s Report: %s", report.summary(), report_path)
    return report


def _prepare_clip(clip: ClipSource, config: TrainConfig, settings: dict[str, Any], encoders: Encoders | None,
                  report: PrepareReport) -> Encoders | None:
    """Cache one clip unless it is cached already; bad clip data is reported, not raised.

    Returns the encoders (loaded here on first need).
    """
    data = config.data
    path = cache_path(data.cache_dir, clip.name)
    clip_fingerprint = fingerprint({**settings, "source": str(clip.path)})
    if is_cached(path, clip_fingerprint):
        report.add(clip.name, "skipped", "already cached with these settings")
        return encoders
    try:
        processed = _process(clip, data)
    except CLIP_ERRORS as error:
        logger.warning("Skipping clip %s: %s", clip.name, error)
        report.add(clip.name, "failed", str(error))
        return encoders
    if encoders is None:
        device = resolve_device(config.train.device)
        logger.info("Loading the encoders on %s.", device)
        encoders = load_encoders(config.models, device, config.memory)
    cached = encode_clip(processed, encoders, data)
    cached.metadata["fingerprint"] = clip_fingerprint
    write_cached_clip(path, cached)
    report.add(clip.name, "prepared", "padded by reversal" if processed.padded else "")
    return encoders


def _process(clip: ClipSource, data: DataConfig) -> ProcessedClip:
    return process_clip(clip.load(), num_frames=data.num_frames, height=data.height, width=data.width,
                        frame_stride=data.frame_stride, percentiles=tuple(data.percentiles))
