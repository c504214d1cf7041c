"""Curation metrics on inputs with known answers, the filters, and the written report."""

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fourdnex_train.cli import main, parse_filter
from fourdnex_train.curation import (
    Criterion,
    brightness,
    camera_smoothness,
    curate,
    filter_bounds,
    high_confidence_ratio,
    mean_confidence,
    select,
)
from fourdnex_train.synthetic_data import write_synthetic_dataset


def test_brightness_is_mean_luminance_in_0_255():
    rgb = torch.zeros(2, 4, 4, 3)
    rgb[..., 0] = 1.0  # pure red: 0.299 * 255
    assert brightness(rgb) == pytest.approx(0.299 * 255)
    rgb[1] = 1.0  # second frame white: mean of 0.299 * 255 and 255
    assert brightness(rgb) == pytest.approx((0.299 * 255 + 255) / 2)


def test_mcv_and_hcpr():
    confidence = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    assert mean_confidence(confidence) == pytest.approx(4.5)
    assert high_confidence_ratio(confidence, 3.0) == pytest.approx(5 / 8)  # strictly above
    assert high_confidence_ratio(confidence, 8.0) == 0.0


def _poses(centres):
    poses = torch.eye(4, dtype=torch.float64).repeat(len(centres), 1, 1)
    poses[:, :3, 3] = torch.tensor(centres, dtype=torch.float64)
    return poses


def test_camera_smoothness_on_a_line_and_a_circle():
    line = camera_smoothness(_poses([[0.5 * t, 0, 0] for t in range(6)]))
    assert line["velocity"] == pytest.approx(0.5)
    assert line["acceleration"] == pytest.approx(0.0, abs=1e-12)
    assert line["curvature"] == pytest.approx(0.0, abs=1e-12)
    radius, step = 2.0, 0.2
    circle = camera_smoothness(_poses([[radius * math.cos(step * t), radius * math.sin(step * t), 0]
                                       for t in range(8)]), eps=0.0)
    speed = 2 * radius * math.sin(step / 2)
    assert circle["velocity"] == pytest.approx(speed)
    assert circle["acceleration"] == pytest.approx(speed * 2 * math.sin(step / 2))
    assert circle["curvature"] == pytest.approx(math.sqrt(2) * math.sin(step / 2))
    assert math.isnan(camera_smoothness(_poses([[0, 0, 0], [1, 0, 0]]))["curvature"])


def test_filters_thresholds_and_percentages():
    metrics = {f"c{i}": {"mcv": float(i), "brightness": 100.0 + i} for i in range(10)}
    metrics["c9"]["brightness"] = float("nan")
    reasons = select(metrics, [Criterion("mcv", top_percent=30), Criterion("brightness", max=108)])
    kept = [name for name, failed in reasons.items() if not failed]
    assert kept == ["c7", "c8"]
    assert reasons["c9"] == ["no brightness"]
    assert "mcv top % 30" in reasons["c0"][0]
    with pytest.raises(ValueError, match="exactly one"):
        Criterion("mcv", min=1, max=2)
    with pytest.raises(ValueError, match="Unknown metric"):
        parse_filter("sharpness:min=1")
    assert parse_filter("curvature:max=0.5") == Criterion("curvature", max=0.5)


def test_curate_writes_csv_kept_list_and_histograms(tmp_path):
    root = write_synthetic_dataset(tmp_path / "clips", num_clips=3, num_frames=3, height=12, width=16)
    for index, folder in enumerate(sorted(root.iterdir())):
        np.save(folder / "confidence.npy", np.full((3, 12, 16), 1.0 + index, dtype=np.float32))
    assert main(["curate", str(root), "--out", str(tmp_path / "report"), "--hcpr-threshold", "1.5",
                 "--filter", "mcv:min=1.5"]) == 0
    with open(tmp_path / "report" / "curation.csv", newline="") as handle:
        rows = {row["clip"]: row for row in csv.DictReader(handle)}
    assert float(rows["clip_002"]["mcv"]) == pytest.approx(3.0)
    assert float(rows["clip_000"]["hcpr"]) == 0.0 and float(rows["clip_001"]["hcpr"]) == 1.0
    assert float(rows["clip_000"]["velocity"]) > 0  # the synthetic camera moves
    assert rows["clip_000"]["kept"] == "false" and rows["clip_001"]["kept"] == "true"
    assert (tmp_path / "report" / "kept.txt").read_text().split() == ["clip_001", "clip_002"]
    for metric in ("brightness", "mcv", "hcpr", "velocity", "acceleration", "curvature"):
        assert Image.open(tmp_path / "report" / f"hist_{metric}.png").size == (640, 400)
    result = curate(root, "simple", tmp_path / "again", progress=False)
    assert len(result.kept) == 3


def test_every_bound_on_one_metric_is_drawn_on_its_histogram(tmp_path):
    root = write_synthetic_dataset(tmp_path / "clips", num_clips=3, num_frames=3, height=12, width=16)
    for index, folder in enumerate(sorted(root.iterdir())):
        np.save(folder / "confidence.npy", np.full((3, 12, 16), 1.0 + index, dtype=np.float32))
    criteria = [Criterion("mcv", min=1.5), Criterion("mcv", max=2.5)]
    result = curate(root, "simple", tmp_path / "report", criteria, progress=False)
    assert result.kept == ["clip_001"]
    assert filter_bounds(result.metrics, criteria, "mcv") == [1.5, 2.5]
    image = Image.open(tmp_path / "report" / "hist_mcv.png").convert("RGB")
    # mcv spans 1..3 over the 560-pixel plot starting at x = 40: the bounds sit at 1/4 and 3/4 of it.
    red = [x for x in range(image.width) if image.getpixel((x, 100)) == (255, 0, 0)]
    assert {180, 460} <= set(red) and all(abs(x - 180) <= 1 or abs(x - 460) <= 1 for x in red), red
