"""The 6D-video representation: layout, XYZ init, normalizations, condition and mask."""

import pytest
import torch

from fourdnex_core import representation as rep


def test_fuse_split_round_trip_in_pixel_and_latent_space():
    rgb, xyz = torch.rand(5, 16, 24, 3), torch.rand(5, 16, 24, 3)
    wide = rep.fuse_width(rgb, xyz, width_dim=-2)
    assert wide.shape == (5, 16, 48, 3)
    assert torch.equal(wide[:, :, :24], rgb) and torch.equal(wide[:, :, 24:], xyz)
    back_rgb, back_xyz = rep.split_width(wide, width_dim=-2)
    assert torch.equal(back_rgb, rgb) and torch.equal(back_xyz, xyz)

    latent_rgb, latent_xyz = torch.randn(1, 16, 3, 4, 6), torch.randn(1, 16, 3, 4, 6)
    split = rep.split_width(rep.fuse_width(latent_rgb, latent_xyz))
    assert torch.equal(split[0], latent_rgb) and torch.equal(split[1], latent_xyz)


def test_fuse_and_split_reject_wrong_shapes():
    with pytest.raises(ValueError, match="same shape"):
        rep.fuse_width(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="even width"):
        rep.split_width(torch.zeros(1, 4, 7))


def test_xyz_init_follows_the_paper_formula():
    height, width = 6, 9
    init = rep.xyz_init_map(height, width, dtype=torch.float64)
    assert init.shape == (height, width, 3)
    for i in range(height):
        for j in range(width):
            expected = (2 * j / (width - 1) - 1, 2 * i / (height - 1) - 1, 1 - 2 * i / (height - 1))
            assert init[i, j].tolist() == pytest.approx(expected, abs=1e-12)
    assert init[0, 0, 2] == 1.0 and init[-1, 0, 2] == -1.0  # far at the top, near at the bottom


def test_point_map_normalization_round_trip_and_range():
    torch.manual_seed(0)
    xyz = torch.randn(4, 10, 12, 3) * torch.tensor([3.0, 1.0, 0.5]) + torch.tensor([10.0, -2.0, 5.0])
    normalized, params = rep.normalize_point_maps(xyz, percentiles=(0.0, 100.0))
    assert normalized.abs().max().item() == pytest.approx(1.0, abs=1e-5)
    assert params.center.shape == (4, 3)
    restored = rep.denormalize_point_maps(normalized, params)
    torch.testing.assert_close(restored, xyz, atol=1e-4, rtol=1e-5)


def test_point_map_normalization_clips_outliers_and_masks_invalid_points():
    xyz = torch.rand(2, 20, 20, 3)
    xyz[0, 0, 0] = torch.tensor([1e6, 1e6, 1e6])  # far outlier
    xyz[1, 5, 5] = torch.tensor([float("nan"), 0.0, 0.0])
    normalized, params = rep.normalize_point_maps(xyz)
    assert torch.isfinite(normalized).all()
    assert normalized.abs().max() <= 1.0 + 1e-6
    assert params.scale < 1.0  # the outlier did not set the scale
    assert torch.equal(normalized[1, 5, 5], torch.zeros(3))


def test_xyz_latent_normalization_touches_only_the_xyz_half():
    wide = torch.randn(1, 16, 3, 4, 8)
    normalized = rep.normalize_xyz_latent(wide)
    assert torch.equal(normalized[..., :4], wide[..., :4])
    torch.testing.assert_close(normalized[..., 4:], (wide[..., 4:] + 0.13) / 1.70)
    torch.testing.assert_close(rep.denormalize_xyz_latent(normalized), wide)


def test_pixels_and_scene_units():
    torch.testing.assert_close(rep.pixels_to_xyz(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))
    values = torch.linspace(-1, 1, 7)
    torch.testing.assert_close(rep.pixels_to_xyz(rep.xyz_to_pixels(values)), values)


def test_condition_mask_values():
    mask = rep.condition_mask(9, 4, 10)  # 9 frames -> 3 latent frames, wide latent 4 x 10
    assert mask.shape == (1, 4, 3, 4, 10)
    assert torch.all(mask[0, :, 0, :, :5] == 1.0)
    assert torch.all(mask[0, :, 0, :, 5:] == 0.5)
    assert torch.all(mask[0, :, 1:] == 0.0)


def test_condition_video_is_fused_first_frame_then_zeros():
    image, init = torch.rand(3, 16, 16) * 2 - 1, rep.xyz_init_map(16, 16).permute(2, 0, 1)
    video = rep.condition_video(image, init, 5)
    assert video.shape == (1, 3, 5, 16, 32)
    assert torch.equal(video[0, :, 0, :, :16], image) and torch.equal(video[0, :, 0, :, 16:], init)
    assert torch.count_nonzero(video[0, :, 1:]) == 0


@pytest.mark.parametrize(
    ("frames", "height", "width", "message"),
    [(48, 480, 720, "use 45 or 49"), (49, 470, 720, "use 464 or 480"), (49, 480, 0, "multiple of 16")],
)
def test_impossible_sizes_name_the_fix(frames, height, width, message):
    with pytest.raises(ValueError, match=message):
        rep.check_video_size(frames, height, width)


def test_valid_size_passes_and_latent_frames():
    rep.check_video_size(49, 480, 720)
    assert rep.latent_frames(49) == 13


def test_library_functions_refuse_impossible_sizes_instead_of_reshaping():
    with pytest.raises(ValueError, match="num_frames must be 4k\\+1.*use 5 or 9"):
        rep.latent_frames(6)
    with pytest.raises(ValueError, match="num_frames must be 4k\\+1"):
        rep.condition_mask(6, 4, 10)
    image, xyz = torch.zeros(3, 32, 48), torch.zeros(3, 32, 48)
    with pytest.raises(ValueError, match="num_frames must be 4k\\+1"):
        rep.condition_video(image, xyz, 6)
    with pytest.raises(ValueError, match="width must be a positive multiple of 16, got 40"):
        rep.condition_video(torch.zeros(3, 32, 40), torch.zeros(3, 32, 40), 5)
    assert rep.condition_video(image, xyz, 5).shape == (1, 3, 5, 32, 96)
