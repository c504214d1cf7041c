"""Tiny synthetic training datasets in the simple layout, from the synthetic 4D scene generator.

Used by the tests, the tiny training benchmark and anyone checking a setup end to end without
real data. Each clip is a :func:`fourdnex_core.geometry.synthetic.make_synthetic_scene` render:
RGB frames as PNGs, point maps and cameras moved into a random "world" frame (so preparation
must bring them back into the first camera's frame), and a caption.
"""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from fourdnex_core.geometry.synthetic import make_synthetic_scene

CAPTIONS = (
    "a red ball rolls across a checkered floor",
    "boxes and spheres stand on the ground while the camera circles",
    "a small scene with moving objects under a bright sky",
)


def random_rigid_transform(seed: int) -> torch.Tensor:
    """A random rotation about a random axis plus a translation: [4, 4] float64."""
    generator = torch.Generator().manual_seed(seed)
    axis = torch.randn(3, generator=generator, dtype=torch.float64)
    axis = axis / axis.norm()
    angle = float(torch.rand(1, generator=generator, dtype=torch.float64)) * math.pi
    cross = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]],
                         dtype=torch.float64)
    rotation = torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
    transform = torch.eye(4, dtype=torch.float64)
    transform[:3, :3] = rotation
    transform[:3, 3] = torch.randn(3, generator=generator, dtype=torch.float64) * 3.0
    return transform


def write_synthetic_clip(folder: Path, *, num_frames: int, height: int, width: int, seed: int, caption: str,
                         camera_motion: float = 1.0) -> Path:
    """Render one scene and write it as a simple-layout clip folder (world-frame points + cameras)."""
    scene = make_synthetic_scene(num_frames, height, width, camera_motion=camera_motion, seed=seed,
                                 dtype=torch.float64)
    world_from_first = random_rigid_transform(seed + 1000)
    xyz_world = scene.xyz @ world_from_first[:3, :3].T + world_from_first[:3, 3]
    cams2world = world_from_first @ scene.cams2world
    (folder / "rgb").mkdir(parents=True, exist_ok=True)
    frames = (scene.rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for index, frame in enumerate(frames):
        imageio.imwrite(folder / "rgb" / f"{index:04d}.png", frame)
    np.save(folder / "xyz.npy", xyz_world.float().numpy())
    np.save(folder / "cams2world.npy", cams2world.float().numpy())
    (folder / "caption.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def write_synthetic_dataset(root: str | Path, *, num_clips: int = 2, num_frames: int = 5, height: int = 40,
                            width: int = 60, seed: int = 0) -> Path:
    """Write ``num_clips`` synthetic clips under ``root`` (simple layout); returns ``root``."""
    root = Path(root)
    for index in range(num_clips):
        write_synthetic_clip(root / f"clip_{index:03d}", num_frames=num_frames, height=height, width=width,
                             seed=seed + index, caption=CAPTIONS[index % len(CAPTIONS)])
    return root
