"""Reading the input image and fitting it to the generation size."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .representation import SIDE_MULTIPLE

RESIZE_MODES = ("area", "crop", "stretch")
"""How the input meets the requested size: "area" (the release's: aspect kept, plain resize), "crop", "stretch"."""


BACKGROUND = (255, 255, 255)
"""What transparent pixels show: white, as an image viewer on a light page (RGB 0..255)."""


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB as it looks (see :func:`to_rgb`), upright (EXIF orientation
    applied), with errors that say what went wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No image at {path}; pass the path of a PNG, JPEG or WebP file.")
    try:
        with Image.open(path) as image:
            return to_rgb(ImageOps.exif_transpose(image), source=path)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"Cannot read {path} as an image ({error}); use a PNG, JPEG or WebP file.") from error


def to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND, *,
           source: str | Path = "the image") -> Image.Image:
    """Any PIL mode -> 8-bit ``RGB`` showing what the image shows.

    - 16-bit and 32-bit integer modes (``I;16``, ``I;16B``, ``I``: 16-bit PNG, TIFF and PGM files)
      are scaled from 0..65535 (or 0..their maximum, when it is above 65535) to 0..255; Pillow's
      own conversion clips them, which turns a 16-bit photo almost all white.
    - ``F`` (float TIFF, PFM) is read as 0..1 when its maximum is at most 1, else as 0..255;
      NaN or infinite pixels are refused.
    - Transparency (``RGBA``, ``LA``, ``PA``, ``P`` or ``L``/``RGB`` with a transparent colour) is
      composited over ``background`` instead of showing the colours hidden under it.
    - Every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``)
      converts with Pillow's colour conversions.
    """
    if image.mode == "F" or image.mode == "I" or image.mode.startswith("I;16"):
        return Image.fromarray(_deep_to_uint8(np.asarray(image), image.mode, source)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _deep_to_uint8(values: np.ndarray, mode: str, source: str | Path) -> np.ndarray:
    """[H, W] integer or float pixels of ``mode`` -> uint8 [H, W] (see :func:`to_rgb`)."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        count = int((~np.isfinite(values)).sum())
        raise ValueError(f"{source} ({mode}) holds {count} NaN or infinite pixels; save it with finite values.")
    peak = float(values.max(initial=0.0))
    if mode == "F":
        scale = 1.0 if peak <= 1.0 else 255.0
    else:
        scale = max(65535.0, peak)
    return np.rint(np.clip(values / scale, 0.0, 1.0) * 255.0).astype(np.uint8)


def image_to_tensor(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A PIL image, a uint8 array [H, W, 3] or a float tensor [H, W, 3] / [1, H, W, 3] in [0, 1]
    (ComfyUI's IMAGE) -> float tensor [3, H, W] in [0, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(to_rgb(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"An image array must be uint8 [H, W, 3], got {image.dtype}.")
        image = torch.from_numpy(image.copy()).float() / 255.0
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"Expected one image [H, W, 3] (or a batch of one), got shape {tuple(image.shape)}.")
    return image[..., :3].permute(2, 0, 1).float().clamp(0.0, 1.0)


def generation_size(source_height: int, source_width: int, height: int, width: int,
                    mode: str = "area") -> tuple[int, int]:
    """The (height, width) an image of ``source_height`` x ``source_width`` is resized to.

    ``mode`` (:data:`RESIZE_MODES`):

    - "area" (the release's sizing): the source's aspect ratio at the area ``height * width``,
      each side ``round(sqrt(area * ratio))`` floored to a multiple of 16 (480 x 720 gives 576 x 576
      for a square image, 432 x 784 for 16:9);
    - "crop": exactly ``height`` x ``width``, covering it and cutting the overhang centred;
    - "stretch": exactly ``height`` x ``width``, the aspect ratio not kept.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"Unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)} "
                         "(\"area\" is the release's sizing).")
    if mode != "area":
        return height, width
    area = height * width
    sides = (math.sqrt(area * source_height / source_width), math.sqrt(area * source_width / source_height))
    fitted_h, fitted_w = (round(side) // SIDE_MULTIPLE * SIDE_MULTIPLE for side in sides)
    if min(fitted_h, fitted_w) < SIDE_MULTIPLE:
        raise ValueError(f"An image of {source_width} x {source_height} keeps its aspect at {width} x {height} "
                         f"only with a side under {SIDE_MULTIPLE} pixels; crop it first, or resize with "
                         "\"crop\" or \"stretch\".")
    return fitted_h, fitted_w


def resize_frames(frames: torch.Tensor, height: int, width: int, *, mode: str = "area",
                  filter: str = "bicubic") -> torch.Tensor:
    """Resize a batch [N, C, H, W] to :func:`generation_size` -> [N, C, h, w].

    One function for inference images and training clips, so both see the same pixels.
    ``filter``: "bicubic" (with antialiasing, clamped to [0, 1]: colours) or "nearest" (point
    maps and masks: values are never blended; the dtype is kept).
    """
    if frames.ndim != 4:
        raise ValueError(f"Frames must be [N, C, H, W], got {tuple(frames.shape)}.")
    if filter not in ("bicubic", "nearest"):
        raise ValueError(f"filter must be 'bicubic' or 'nearest', got {filter!r}.")
    source_h, source_w = frames.shape[-2:]
    out_h, out_w = generation_size(source_h, source_w, height, width, mode)
    size = (out_h, out_w)
    if mode == "crop":
        scale = max(out_h / source_h, out_w / source_w)
        size = (max(out_h, round(source_h * scale)), max(out_w, round(source_w * scale)))
    if filter == "bicubic":
        resized = F.interpolate(frames.float(), size=size, mode="bicubic", antialias=True,
                                align_corners=False).clamp(0.0, 1.0)
    else:
        resized = F.interpolate(frames.float(), size=size, mode="nearest-exact").to(frames.dtype)
    top, left = (size[0] - out_h) // 2, (size[1] - out_w) // 2
    return resized[..., top:top + out_h, left:left + out_w]


def fit_image(image: torch.Tensor, height: int, width: int, mode: str = "area") -> torch.Tensor:
    """Resize one picture [3, H, W] in [0, 1] for generation (:func:`resize_frames`) -> [3, h, w]."""
    return resize_frames(image[None], height, width, mode=mode)[0]


def resize_point_map(xyz: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A first-frame XYZ guess [H, W, 3] at the video size -> [height, width, 3].

    Bilinear with the corners aligned, so a plane stays the same plane: the sloped-plane init at
    one size resamples to exactly the sloped plane at another.
    """
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"An XYZ map must be [H, W, 3], got {tuple(xyz.shape)}.")
    if tuple(xyz.shape[:2]) == (height, width):
        return xyz
    resized = F.interpolate(xyz.permute(2, 0, 1)[None].float(), size=(height, width), mode="bilinear",
                            align_corners=True)
    return resized[0].permute(1, 2, 0).to(xyz.dtype)
