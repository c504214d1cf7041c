"""Writing frames to disk: H.264 mp4 videos (imageio + imageio-ffmpeg) and numbered PNG files.

Frames are [H, W, 3] RGB, either uint8 or float in [0, 1] (numpy arrays or torch tensors), given
as one [N, H, W, 3] array or as any iterable of frames (so a renderer can stream into the
writer). Videos are libx264 / yuv420p, which needs even sides: odd frames are padded by one
repeated row or column.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from PIL import Image

from fourdnex_core.atomic_write import atomic_path

logger = logging.getLogger(__name__)

Frame = np.ndarray | torch.Tensor


def frame_to_uint8(frame: Frame) -> np.ndarray:
    """One frame as a contiguous uint8 array [H, W, 3]; floats are clipped to [0, 1] and rounded."""
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"A frame must be [H, W, 3] RGB, got {frame.shape}; for a batch pass [N, H, W, 3].")
    if frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    if not np.issubdtype(frame.dtype, np.floating):
        raise ValueError(f"Frames must be uint8 or float in [0, 1], got {frame.dtype}.")
    return np.rint(np.clip(frame, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return frame
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def write_video(path: str | Path, frames: Iterable[Frame], fps: float, quality: int = 8) -> Path:
    """Encode ``frames`` ([N, H, W, 3] or an iterable of [H, W, 3]) as an H.264 mp4 at ``path``.

    quality: imageio-ffmpeg's 0 (worst) .. 10 (best) scale. Returns ``path``.
    """
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}.")
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as temporary:
        writer = imageio.get_writer(temporary, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    pixelformat="yuv420p", quality=quality, macro_block_size=1,
                                    ffmpeg_log_level="error")
        try:
            count = _append_frames(writer, frames)
        finally:
            writer.close()
        if count == 0:
            raise ValueError(f"No frames given for {path}; a video needs at least one frame.")
    logger.debug("wrote %d frames to %s", count, path)
    return path


def _append_frames(writer, frames: Iterable[Frame]) -> int:
    """Append every frame (one size, padded to even sides) to an imageio writer; returns the count."""
    count, size = 0, None
    for frame in frames:
        image = _pad_to_even(frame_to_uint8(frame))
        if size is None:
            size = image.shape
        elif image.shape != size:
            raise ValueError(f"Frame {count} is {image.shape[:2]}, earlier frames {size[:2]}: all frames "
                             "of a video must have one size.")
        writer.append_data(image)
        count += 1
    return count


def save_frame(path: str | Path, frame: Frame) -> Path:
    """Write one frame [H, W, 3] as a PNG at ``path`` (atomically)."""
    path = Path(path)
    image = Image.fromarray(frame_to_uint8(frame))
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return path


def frame_path(directory: str | Path, index: int, prefix: str = "frame_") -> Path:
    """The file name :func:`write_frames` gives frame ``index``: ``directory/{prefix}{index:05d}.png``."""
    return Path(directory) / f"{prefix}{index:05d}.png"


def write_frames(directory: str | Path, frames: Iterable[Frame], prefix: str = "frame_") -> list[Path]:
    """Write each frame as a numbered PNG in ``directory`` (see :func:`frame_path`); returns the paths."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    return [save_frame(frame_path(directory, index, prefix), frame) for index, frame in enumerate(frames)]
