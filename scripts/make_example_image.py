"""Draws the demo's example image (fourdnex_core/assets/example.png): a ball on a checkered floor."""

from pathlib import Path

import numpy as np
from PIL import Image

HEIGHT, WIDTH = 240, 360


def draw() -> Image.Image:
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    horizon = HEIGHT * 0.45
    sky = np.stack([0.45 + 0.3 * rows / horizon, 0.65 + 0.2 * rows / horizon, np.full_like(rows, 0.95)], -1)
    # Floor: a checkerboard in perspective below the horizon.
    depth = 40.0 / np.maximum(rows - horizon, 1.0)
    lateral = (cols - WIDTH / 2) * depth / 60.0
    checker = (np.floor(lateral) + np.floor(depth * 2.0)) % 2
    floor = np.where(checker[..., None] > 0, [0.85, 0.8, 0.7], [0.35, 0.3, 0.25])
    image = np.where((rows > horizon)[..., None], floor, sky)
    # A shaded red ball standing on the floor.
    cy, cx, radius = HEIGHT * 0.62, WIDTH * 0.42, HEIGHT * 0.16
    dy, dx = (rows - cy) / radius, (cols - cx) / radius
    inside = dx**2 + dy**2 < 1.0
    nz = np.sqrt(np.clip(1.0 - dx**2 - dy**2, 0.0, 1.0))
    shade = np.clip(0.25 + 0.75 * (-0.4 * dx - 0.5 * dy + 0.75 * nz), 0.0, 1.0)
    ball = np.stack([0.9 * shade, 0.15 * shade, 0.1 * shade], -1)
    image = np.where(inside[..., None], ball, image)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


if __name__ == "__main__":
    path = Path(__file__).resolve().parents[1] / "fourdnex_core" / "assets" / "example.png"
    draw().save(path, optimize=True)
    print(path)
