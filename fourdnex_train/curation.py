"""``fourdnex-train curate``: the 4DNeX-10M quality metrics, filters and reports (paper sec. 3).

Metrics per clip (NaN where the clip lacks the data):

* ``brightness``: mean luminance 0.299 R + 0.587 G + 0.114 B over all pixels and frames, in
  0..255 (removes extreme illumination);
* ``mcv``: Mean Confidence Value, the mean of the confidence maps over all pixels and frames;
* ``hcpr``: High-Confidence Pixel Ratio, the share of pixels whose confidence exceeds
  ``hcpr_threshold`` (tau);
* camera smoothness from the camera centres c_t: velocity v_t = c_{t+1} - c_t, acceleration
  a_t = v_{t+1} - v_t, and curvature k_t = ||v_{t+1} - v_t|| / sqrt(||v_{t+1}||^2 + ||v_t||^2 + eps)
  (our reading of the paper's eq. 1, whose typesetting is damaged: the change of velocity
  relative to the speed, scale-free). ``velocity``, ``acceleration``, ``curvature`` are the
  means of ||v_t||, ||a_t|| and k_t. The paper keeps clips with low values of all three.

Filters: per metric a ``min`` / ``max`` threshold, or keep the ``top_percent`` highest /
``bottom_percent`` lowest values. A clip is kept when it passes every filter; a clip lacking a
filtered metric fails that filter. Output: ``curation.csv`` (metrics, kept, reasons),
``kept.txt`` (names) and one histogram PNG per metric.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from fourdnex_core.atomic_write import atomic_path
from fourdnex_train.data_layout import ClipSource, find_clips

logger = logging.getLogger(__name__)

LUMA = (0.299, 0.587, 0.114)
METRICS = ("brightness", "mcv", "hcpr", "velocity", "acceleration", "curvature")
DEFAULT_HCPR_THRESHOLD = 3.0


def brightness(rgb: torch.Tensor) -> float:
    """Mean luminance of RGB frames [F, H, W, 3] in [0, 1], on the 0..255 scale."""
    if rgb.shape[-1] != 3:
        raise ValueError(f"RGB frames must end in 3 channels, got {tuple(rgb.shape)}.")
    weights = torch.tensor(LUMA, dtype=torch.float64)
    return float((rgb.double() @ weights).mean() * 255.0)


def mean_confidence(confidence: torch.Tensor) -> float:
    """MCV: the mean of confidence maps [F, H, W]."""
    return float(confidence.double().mean())


def high_confidence_ratio(confidence: torch.Tensor, threshold: float) -> float:
    """HCPR: the share of pixels of confidence maps [F, H, W] strictly above ``threshold``."""
    return float((confidence > threshold).double().mean())


def camera_smoothness(cams2world: torch.Tensor, eps: float = 1e-8) -> dict[str, float]:
    """Mean speed, acceleration and curvature of the camera centres of cams2world [F, 4, 4].

    Needs 3 frames for acceleration and curvature (NaN otherwise); see the module docstring.
    """
    if cams2world.ndim != 3 or cams2world.shape[-2:] != (4, 4):
        raise ValueError(f"cams2world must be [F, 4, 4], got {tuple(cams2world.shape)}.")
    centres = cams2world[:, :3, 3].double()
    velocity = centres[1:] - centres[:-1]                 # [F-1, 3]
    acceleration = velocity[1:] - velocity[:-1]           # [F-2, 3]
    speed = velocity.norm(dim=-1)
    curvature = acceleration.norm(dim=-1) / torch.sqrt(speed[1:] ** 2 + speed[:-1] ** 2 + eps)
    nan = float("nan")
    return {
        "velocity": float(speed.mean()) if len(speed) else nan,
        "acceleration": float(acceleration.norm(dim=-1).mean()) if len(acceleration) else nan,
        "curvature": float(curvature.mean()) if len(curvature) else nan,
    }


def clip_metrics(clip: ClipSource, hcpr_threshold: float = DEFAULT_HCPR_THRESHOLD) -> dict[str, float]:
    """Every metric of one clip (NaN for those its data does not allow)."""
    raw = clip.load()
    values = dict.fromkeys(METRICS, float("nan"))
    values["brightness"] = brightness(raw.rgb)
    confidence = clip.confidence()
    if confidence is not None:
        values["mcv"] = mean_confidence(confidence)
        values["hcpr"] = high_confidence_ratio(confidence, hcpr_threshold)
    if raw.cams2world is not None:
        values.update(camera_smoothness(raw.cams2world))
    return values


@dataclasses.dataclass(frozen=True)
class Criterion:
    """One filter on one metric (set exactly one of the four bounds)."""

    metric: str
    min: float | None = None
    max: float | None = None
    top_percent: float | None = None
    bottom_percent: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"Unknown metric {self.metric!r}; use one of {', '.join(METRICS)}.")
        bounds = [value for value in (self.min, self.max, self.top_percent, self.bottom_percent) if value is not None]
        if len(bounds) != 1:
            raise ValueError(f"A filter on {self.metric} needs exactly one of min, max, top_percent, bottom_percent.")
        for percent in (self.top_percent, self.bottom_percent):
            if percent is not None and not 0 < percent <= 100:
                raise ValueError(f"Percentages must be in (0, 100], got {percent} for {self.metric}.")

    def describe(self) -> str:
        for word, value in (("min", self.min), ("max", self.max), ("top %", self.top_percent),
                            ("bottom %", self.bottom_percent)):
            if value is not None:
                return f"{self.metric} {word} {value:g}"
        raise AssertionError("unreachable: __post_init__ requires one bound")

    def cutoff(self, values: Sequence[float]) -> tuple[float, float]:
        """The kept interval [low, high] of this criterion over all clips' ``values``."""
        finite = sorted(value for value in values if math.isfinite(value))
        if self.min is not None or self.max is not None:
            return (self.min if self.min is not None else -math.inf, self.max if self.max is not None else math.inf)
        if not finite:
            return (math.inf, -math.inf)
        percent = self.top_percent if self.top_percent is not None else self.bottom_percent
        count = max(1, math.ceil(len(finite) * percent / 100.0))
        if self.top_percent is not None:
            return (finite[-count], math.inf)
        return (-math.inf, finite[count - 1])


def select(metrics: Mapping[str, Mapping[str, float]], criteria: Sequence[Criterion]) -> dict[str, list[str]]:
    """{clip: reasons it fails} for every clip (an empty list: kept)."""
    reasons: dict[str, list[str]] = {name: [] for name in metrics}
    for criterion in criteria:
        low, high = criterion.cutoff([values[criterion.metric] for values in metrics.values()])
        for name, values in metrics.items():
            value = values[criterion.metric]
            if not math.isfinite(value):
                reasons[name].append(f"no {criterion.metric}")
            elif not low <= value <= high:
                reasons[name].append(f"{criterion.describe()} ({criterion.metric} = {value:.4g})")
    return reasons


def filter_bounds(metrics: Mapping[str, Mapping[str, float]], criteria: Sequence[Criterion],
                  metric: str) -> list[float]:
    """The finite ends of the kept intervals of every criterion on ``metric`` (for the histogram)."""
    bounds = []
    for criterion in criteria:
        if criterion.metric == metric:
            interval = criterion.cutoff([values[metric] for values in metrics.values()])
            bounds += [bound for bound in interval if math.isfinite(bound)]
    return bounds


def write_histogram(values: Sequence[float], path: Path, title: str, bounds: Sequence[float] = (),
                    bins: int = 20) -> Path:
    """A histogram PNG of the finite ``values``; every finite bound in ``bounds`` (the ends of the
    kept intervals of all filters on this metric) is a red vertical line."""
    width, height, margin = 640, 400, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    finite = [value for value in values if math.isfinite(value)]
    draw.text((margin, 10), f"{title} ({len(finite)} clips)", fill="black")
    if finite:
        low, high = min(finite), max(finite)
        span = (high - low) or 1.0
        counts = [0] * bins
        for value in finite:
            counts[min(bins - 1, int((value - low) / span * bins))] += 1
        plot_w, plot_h = width - 2 * margin, height - 3 * margin
        bar_w = plot_w / bins
        for index, count in enumerate(counts):
            top = height - 2 * margin - plot_h * count / max(counts)
            draw.rectangle([margin + index * bar_w, top, margin + (index + 1) * bar_w - 2, height - 2 * margin],
                           fill=(70, 110, 180))
        draw.text((margin, height - 2 * margin + 5), f"{low:.4g}", fill="black")
        draw.text((width - margin - 60, height - 2 * margin + 5), f"{high:.4g}", fill="black")
        for bound in bounds:
            if math.isfinite(bound) and low <= bound <= high:
                x = margin + (bound - low) / span * plot_w
                draw.line([x, margin, x, height - 2 * margin], fill="red", width=2)
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return path


@dataclasses.dataclass
class CurationResult:
    """metrics: {clip: {metric: value}}; reasons: {clip: failed filters}; kept: clip names."""

    metrics: dict[str, dict[str, float]]
    reasons: dict[str, list[str]]

    @property
    def kept(self) -> list[str]:
        return [name for name, failed in self.reasons.items() if not failed]


def curate(
    root: str | Path,
    layout: str,
    out_dir: str | Path,
    criteria: Sequence[Criterion] = (),
    *,
    hcpr_threshold: float = DEFAULT_HCPR_THRESHOLD,
    progress: bool = True,
) -> CurationResult:
    """Measure every clip, apply ``criteria``, write the CSV, kept list and histograms."""
    out_dir = Path(out_dir)
    metrics: dict[str, dict[str, float]] = {}
    unreadable: dict[str, str] = {}
    for clip in tqdm(find_clips(root, layout), desc="Measuring clips", disable=not progress):
        try:
            metrics[clip.name] = clip_metrics(clip, hcpr_threshold)
        except (ValueError, FileNotFoundError, OSError) as error:
            logger.warning("Cannot measure clip %s: %s", clip.name, error)
            unreadable[clip.name] = str(error)
            metrics[clip.name] = dict.fromkeys(METRICS, float("nan"))
    reasons = select(metrics, criteria)
    for name, error in unreadable.items():
        reasons[name].insert(0, f"unreadable: {error}")
    result = CurationResult(metrics=metrics, reasons=reasons)
    _write_csv(out_dir / "curation.csv", result)
    with atomic_path(out_dir / "kept.txt") as temporary:
        temporary.write_text("".join(f"{name}\n" for name in result.kept), encoding="utf-8")
    for metric in METRICS:
        write_histogram([values[metric] for values in metrics.values()], out_dir / f"hist_{metric}.png", metric,
                        filter_bounds(metrics, criteria, metric))
    logger.info("Curation: kept %d of %d clips; report in %s.", len(result.kept), len(metrics), out_dir)
    return result


def _write_csv(path: Path, result: CurationResult) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["clip", *METRICS, "kept", "reasons"])
        for name, values in result.metrics.items():
            failed = result.reasons[name]
            writer.writerow([name, *(f"{values[m]:.6g}" for m in METRICS), str(not failed).lower(), "; ".join(failed)])
