"""Fitting the input image to the generation size: the release's area sizing, crop and stretch."""

import pytest
import torch

from fourdnex_core.image_io import RESIZE_MODES, fit_image, generation_size, resize_frames
from fourdnex_train.pointmaps import fit_frames


def test_area_sizing_is_the_releases():
    # METHOD.md: a square image gives 576 x 576, a 16:9 one 432 x 784, 3:2 stays 480 x 720.
    assert generation_size(1000, 1000, 480, 720) == (576, 576)
    assert generation_size(1080, 1920, 480, 720) == (432, 784)
    assert generation_size(1920, 1080, 480, 720) == (784, 432)
    assert generation_size(240, 360, 480, 720) == (480, 720)
    # round(sqrt(345600 * 3 / 4)) = 509 -> 496; round(sqrt(345600 * 4 / 3)) = 679 -> 672
    assert generation_size(768, 1024, 480, 720) == (496, 672)


def test_crop_and_stretch_give_the_requested_size():
    for mode in ("crop", "stretch"):
        assert generation_size(1000, 1000, 480, 720, mode) == (480, 720)
    assert RESIZE_MODES == ("area", "crop", "stretch")
    with pytest.raises(ValueError, match="area, crop, stretch"):
        generation_size(10, 10, 480, 720, "fill")


def test_a_too_elongated_image_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match="under 16 pixels.*crop"):
        generation_size(10, 20000, 480, 720)


def _ramp(height, width):
    """[3, H, W]: red ramps left to right, green top to bottom."""
    xs = torch.linspace(0, 1, width).expand(height, width)
    ys = torch.linspace(0, 1, height)[:, None].expand(height, width)
    return torch.stack([xs, ys, torch.full_like(xs, 0.5)])


def test_area_resizes_the_whole_image_crop_cuts_it():
    square = _ramp(100, 100)
    area = fit_image(square, 32, 48)  # default: area, 39 x 39 -> 32 x 32
    assert area.shape == (3, 32, 32)
    # Nothing cut: the ramps still run from (about) 0 to 1 across the frame.
    assert area[0, :, 0].max() < 0.05 and area[0, :, -1].min() > 0.95
    cropped = fit_image(square, 32, 48, mode="crop")
    assert cropped.shape == (3, 32, 48)
    assert cropped[1, 0].min() > 0.1 and cropped[1, -1].max() < 0.9  # top and bottom cut away
    stretched = fit_image(square, 32, 48, mode="stretch")
    assert stretched.shape == (3, 32, 48)
    assert stretched[1, 0].max() < 0.05 and stretched[0, :, 0].max() < 0.05  # nothing cut
    assert area.min() >= 0 and area.max() <= 1


def test_training_and_inference_resize_the_same_way():
    # The trainer's crop is the generation's crop, pixel for pixel (one function).
    frames = torch.rand(3, 40, 70, 3)
    trained = fit_frames(frames, 32, 48, mode="bicubic")
    inferred = torch.stack([fit_image(frame.permute(2, 0, 1), 32, 48, mode="crop") for frame in frames])
    assert torch.equal(trained, inferred.permute(0, 2, 3, 1))


def test_nearest_filter_never_blends_values():
    labels = torch.randint(0, 5, (2, 1, 30, 50)).float()
    for mode in RESIZE_MODES:
        out = resize_frames(labels, 16, 32, mode=mode, filter="nearest")
        assert set(out.unique().tolist()) <= set(labels.unique().tolist())
