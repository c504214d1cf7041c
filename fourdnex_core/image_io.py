"""Reading the input image and fitting it to the generation size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, with errors that say what went wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No image at {path}; pass the path of a PNG, JPEG or WebP file.")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"Cannot read {path} as an image ({error}); use a PNG, JPEG or WebP file.") from error


def image_to_tensor(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A PIL image, a uint8 array [H, W, 3] or a float tensor [H, W, 3] / [1, H, W, 3] in [0, 1]
    (ComfyUI's IMAGE) -> float tensor [3, H, W] in [0, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"An image array must be uint8 [H, W, 3], got {image.dtype}.")
        image = torch.from_numpy(image.copy()).float() / 255.0
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"Expected one image [H, W, 3] (or a batch of one), got shape {tuple(image.shape)}.")
    return image[..., :3].permute(2, 0, 1).float().clamp(0.0, 1.0)


def fit_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize [3, H, W] to cover height x width (keeping aspect), then centre-crop: -> [3, height, width]."""
    _, source_h, source_w = image.shape
    scale = max(height / source_h, width / source_w)
    resized_h, resized_w = max(height, round(source_h * scale)), max(width, round(source_w * scale))
    resized = F.interpolate(image[None], size=(resized_h, resized_w), mode="bicubic", antialias=True, align_corners=False)[0]
    top, left = (resized_h - height) // 2, (resized_w - width) // 2
    return resized[:, top:top + height, left:left + width].clamp(0.0, 1.0)
