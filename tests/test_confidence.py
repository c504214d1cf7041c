"""The one validity / confidence rule, as post-optimization and point clouds apply it."""

import numpy as np
import pytest
import torch

from fourdnex_core.geometry.confidence import mask_keeps
from fourdnex_core.geometry.pointcloud import valid_mask
from fourdnex_core.geometry.postopt import usable_points

CONFIDENCE = np.array([[0.9, 0.0, np.nan], [0.2, 0.5, 1e-6]], np.float32)


def test_numpy_and_torch_keep_the_same_points():
    for threshold, expected in ((0.0, [[True, False, False], [True, True, True]]),
                                (0.5, [[True, False, False], [False, True, False]])):
        from_numpy = mask_keeps(CONFIDENCE, threshold)
        from_torch = mask_keeps(torch.from_numpy(CONFIDENCE), threshold)
        assert isinstance(from_numpy, np.ndarray) and isinstance(from_torch, torch.Tensor)
        np.testing.assert_array_equal(from_numpy, expected)
        np.testing.assert_array_equal(from_torch.numpy(), expected)


def test_a_validity_mask_has_no_confidence_so_the_threshold_does_not_apply():
    validity = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(mask_keeps(validity, 0.7), validity)
    np.testing.assert_array_equal(mask_keeps(validity.astype(np.uint8) * 3, 0.7), validity)


@pytest.mark.parametrize("bad", [-0.1, np.inf, -np.inf])
def test_negative_or_infinite_confidence_is_refused_by_every_user(bad):
    confidence = np.full((2, 4, 5), 0.5, np.float32)
    confidence[1, 2, 3] = bad
    xyz = np.random.default_rng(0).normal(size=(2, 4, 5, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="Confidence must be finite and >= 0"):
        mask_keeps(confidence)
    with pytest.raises(ValueError, match="Confidence must be finite and >= 0"):
        valid_mask(xyz[1], confidence[1])
    with pytest.raises(ValueError, match="Confidence must be finite and >= 0"):
        usable_points(torch.from_numpy(xyz), torch.from_numpy(confidence))


def test_a_negative_threshold_is_refused_by_every_user():
    with pytest.raises(ValueError, match="min_confidence must be >= 0"):
        mask_keeps(CONFIDENCE, -0.5)
    with pytest.raises(ValueError, match="min_confidence must be >= 0"):
        valid_mask(np.zeros((2, 3, 3), np.float32), CONFIDENCE, min_confidence=-0.5)
