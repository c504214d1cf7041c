"""A training clip found on disk, and the readers every folder layout shares.

A layout (:mod:`fourdnex_train.data_layout`, :mod:`fourdnex_train.layout_4dnex10m`) yields :class:`ClipSource`
objects: a name, where the clip lives, and a ``load()`` that reads the arrays only when called, so
a bad clip fails alone (and is reported) instead of stopping a whole dataset.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from fourdnex_core.image_io import load_image
from fourdnex_train.pointmaps import RawClip

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclasses.dataclass(frozen=True)
class ClipSource:
    """A clip found on disk. ``load()`` reads it as a :class:`RawClip`; ``confidence()`` its
    confidence maps [F, H, W] (None when the clip has none)."""

    name: str
    path: Path
    load: Callable[[], RawClip]
    confidence: Callable[[], torch.Tensor | None]


def no_confidence() -> None:
    """``ClipSource.confidence`` of a clip that stores no confidence maps."""
    return None


def _image_frames(folder: Path, frame_ids: list[int] | None) -> list[np.ndarray]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} frames.")
    chosen = files if frame_ids is None else [files[i] for i in frame_ids if i < len(files)]
    return [np.asarray(load_image(p)) for p in chosen]  # any image mode (gray, 16-bit, RGBA) -> uint8 RGB


def _video_frames(path: Path, frame_ids: list[int] | None) -> list[np.ndarray]:
    wanted = None if frame_ids is None else set(frame_ids)
    frames_by_id = {}
    with imageio.get_reader(path) as reader:
        for index, frame in enumerate(reader):
            if wanted is None or index in wanted:
                frames_by_id[index] = np.asarray(frame)[..., :3]
            if wanted is not None and index >= max(wanted):
                break
    order = sorted(frames_by_id) if frame_ids is None else [i for i in frame_ids if i in frames_by_id]
    return [frames_by_id[i] for i in order]


def read_video(path: Path, frame_ids: list[int] | None = None) -> torch.Tensor:
    """Frames of a video file, or of a folder of images (sorted by name), as [F, H, W, 3] float in [0, 1].

    ``frame_ids``: which frames, 0-based (None: all).
    """
    if not path.exists():
        raise FileNotFoundError(f"No video or frame folder at {path}.")
    frames = _image_frames(path, frame_ids) if path.is_dir() else _video_frames(path, frame_ids)
    if frame_ids is not None and len(frames) != len(frame_ids):
        raise ValueError(f"{path} has only {len(frames)} of the {len(frame_ids)} frames the annotations need "
                         f"(frames {frame_ids[0]}..{frame_ids[-1]}); the video and its annotations disagree.")
    if not frames:
        raise ValueError(f"{path} holds no frames.")
    return torch.from_numpy(np.stack(frames)).float() / 255.0


def frames_to_float(images: np.ndarray) -> torch.Tensor:
    """Stored frames [F, H, W] (grey) or [F, H, W, 3|4], uint8 or float in [0, 1] -> [F, H, W, 3] float."""
    frames = torch.from_numpy(np.asarray(images))
    if frames.ndim == 3:
        frames = frames[..., None].expand(*frames.shape, 3)
    if frames.ndim != 4 or frames.shape[-1] < 3:
        raise ValueError(f"Frames must be [F, H, W] or [F, H, W, 3], got {tuple(frames.shape)}.")
    frames = frames[..., :3]
    return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()


def resize_rgb_to(rgb: torch.Tensor, size: tuple[int, int], name: str) -> torch.Tensor:
    """RGB [F, H, W, 3] resized to the annotation size ``(H', W')`` (warns when the aspect ratios differ)."""
    if tuple(rgb.shape[1:3]) == tuple(size):
        return rgb
    source_aspect, target_aspect = rgb.shape[2] / rgb.shape[1], size[1] / size[0]
    if abs(source_aspect / target_aspect - 1) > 0.02:
        logger.warning("Clip %s: video %dx%d and annotations %dx%d differ in aspect ratio; the video is stretched.",
                       name, rgb.shape[2], rgb.shape[1], size[1], size[0])
    resized = torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), size=tuple(size), mode="bicubic",
                                              antialias=True, align_corners=False)
    return resized.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()


def load_array(path: Path) -> torch.Tensor:
    """A ``.npy`` file as a tensor (no pickles)."""
    return torch.from_numpy(np.load(path, allow_pickle=False))


def optional_array(path: Path) -> torch.Tensor | None:
    """:func:`load_array`, or None when the file does not exist."""
    return load_array(path) if path.is_file() else None
