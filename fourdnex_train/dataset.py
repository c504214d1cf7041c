"""The prepared clips as a stream of training batches with a reproducible order.

Order: epoch e visits the clips in ``randperm(n)`` drawn from ``seed + e``; the stream of clip
indices is those permutations one after another. Batch k of process r (of R) takes stream
positions ``(k * R + r) * B ... + B - 1``. The order is a pure function of (seed, k), so resuming
at step k needs no saved data-loader state and replays exactly the uninterrupted run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from fourdnex_train.cache import TENSORS, read_cached_clip
from fourdnex_train.flow_matching import Batch

logger = logging.getLogger(__name__)

_BATCH_KEYS = ("rgb_latent", "xyz_latent", "condition", "prompt_embeds", "image_embeds")


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in TENSORS if key != "xyz_center"}


class LatentDataset:
    """Cache files of one shape; :meth:`batch` reads the clips of batch k from disk.

    Args:
        files: cache files (see :func:`fourdnex_train.cache.list_cache`).
        batch_size: clips per batch B.
        seed: seeds the epoch permutations.
        rank, world_size: this process's share of each global batch (multi-GPU).
    """

    def __init__(self, files: Sequence[Path], batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1):
        if not files:
            raise ValueError("No prepared clips to train on; run `fourdnex-train prepare CONFIG` first.")
        self.files = list(files)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._check_shapes()

    def __len__(self) -> int:
        return len(self.files)

    def _check_shapes(self) -> None:
        reference = _shapes(self.files[0])
        for path in self.files[1:]:
            shapes = _shapes(path)
            if shapes != reference:
                raise ValueError(
                    f"{path.name} has tensor shapes {shapes} but {self.files[0].name} has {reference}: the cache "
                    "mixes training sizes or models. Prepare every clip with one config (or delete stale files)."
                )

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.files), generator=generator)

    def clip_indices(self, batch_index: int) -> list[int]:
        """Indices into ``files`` of this process's batch ``batch_index`` (module docstring)."""
        start = (batch_index * self.world_size + self.rank) * self.batch_size
        count = len(self.files)
        indices = []
        for position in range(start, start + self.batch_size):
            epoch, offset = divmod(position, count)
            indices.append(int(self._permutation(epoch)[offset]))
        return indices

    def batch(self, batch_index: int) -> Batch:
        """Batch ``batch_index`` as float32 CPU tensors, stacked along a new batch dimension."""
        clips = [read_cached_clip(self.files[index]) for index in self.clip_indices(batch_index)]
        return Batch(**{key: torch.stack([getattr(clip, key).float() for clip in clips]) for key in _BATCH_KEYS})
