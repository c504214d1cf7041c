"""Training metrics: a CSV file always, TensorBoard when the ``tensorboard`` package is installed."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path

from fourdnex_core.atomic_write import atomic_path

logger = logging.getLogger(__name__)

COLUMNS = ("step", "loss", "lr", "grad_norm", "sigma_mean", "seconds")


def read_log(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics CSV as floats (``step`` as int)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return [{key: int(value) if key == "step" else float(value) for key, value in row.items()}
                for row in csv.DictReader(handle)]


class MetricsLogger:
    """Appends one row per optimizer step to ``metrics.csv`` (and TensorBoard scalars).

    On resume from step s, rows after s (logged by the interrupted run after its last
    checkpoint) are dropped, so the file reads as one uninterrupted run.
    """

    def __init__(self, folder: Path, *, resume_step: int = 0, tensorboard: bool = True):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "metrics.csv"
        self._truncate_after(resume_step)
        new = not self.path.is_file()
        self._handle = open(self.path, "a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._handle)
        if new:
            self._writer.writerow(COLUMNS)
        self._tensorboard = _tensorboard_writer(folder / "tensorboard") if tensorboard else None

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = [row for row in read_log(self.path) if row["step"] <= step]
        with atomic_path(self.path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(kept)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self._writer.writerow([step, *(f"{values[key]:.8g}" for key in COLUMNS[1:])])
        self._handle.flush()
        if self._tensorboard is not None:
            for key in COLUMNS[1:]:
                self._tensorboard.add_scalar(f"train/{key}", values[key], step)

    def close(self) -> None:
        self._handle.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _tensorboard_writer(folder: Path):
    """A TensorBoard SummaryWriter, or None (with one info line) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed; logging to metrics.csv only (pip install tensorboard).")
        return None
    return SummaryWriter(log_dir=str(folder))
