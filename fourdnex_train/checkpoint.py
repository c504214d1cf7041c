"""Training checkpoints: written atomically, kept to the last K, resumed exactly.

A checkpoint is a folder ``<output_dir>/checkpoints/step-<00000123>/`` holding

* ``training_state.pt``: the trainable tensors (LoRA factors, domain embeddings), the optimizer
  and scheduler state dicts, the RNG states (torch CPU, CUDA) and the step. Read back with
  ``torch.load(weights_only=True)`` (tensors and plain containers only);
* ``<output_name>.safetensors``: the LoRA at that step, ready for the loader and nodes.

It is written into a hidden ``.step-<n>.tmp`` folder first and renamed into place (an atomic
rename on POSIX and Windows), so a folder named ``step-<n>`` is always complete: a process killed
mid-write leaves only a ``.tmp`` folder, which is never read and is removed on the next save.
The data order is a pure function of the seed and the step (:mod:`fourdnex_train.dataset`), so the step
is all the data loader needs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    """The global RNG states worth restoring (torch CPU and every CUDA device)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """Saves, lists, prunes and loads the checkpoints under ``folder``."""

    def __init__(self, folder: Path, keep_last: int):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}.")
        self.folder = Path(folder)
        self.keep_last = keep_last

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as (step, folder), oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
        return sorted(found)

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None."""
        found = self.checkpoints()
        return found[-1][1] if found else None

    def save(self, step: int, state: dict[str, Any], write_extra: Callable[[Path], None] | None = None) -> Path:
        """Write ``state`` (and whatever ``write_extra(folder)`` writes) as checkpoint ``step``, atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_partial()
        final = self.folder / f"step-{step:08d}"
        temporary = self.folder / f".step-{step:08d}.tmp"
        temporary.mkdir()
        torch.save(state, temporary / STATE_FILE)
        if write_extra is not None:
            write_extra(temporary)
        _fsync_folder(temporary)
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        _fsync_folder(self.folder)
        self._prune()
        logger.info("Saved checkpoint %s.", final)
        return final

    def load(self, folder: Path) -> dict[str, Any]:
        """Read a checkpoint's training state (tensors and containers only)."""
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a complete checkpoint (no {STATE_FILE}); pass a step-<n> "
                                    "folder under <output_dir>/checkpoints, or resume = \"auto\".")
        return torch.load(path, map_location="cpu", weights_only=True)

    def _remove_partial(self) -> None:
        for path in self.folder.glob(".step-*.tmp"):
            logger.warning("Removing %s, left by a run killed while saving.", path)
            shutil.rmtree(path, ignore_errors=True)

    def _prune(self) -> None:
        for _, path in self.checkpoints()[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    """Flush the files of ``folder`` and the folder entry itself to disk (best effort off POSIX)."""
    for path in [*folder.iterdir(), folder] if folder.is_dir() else [folder]:
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(descriptor)
        except OSError:
            pass
        finally:
            os.close(descriptor)
