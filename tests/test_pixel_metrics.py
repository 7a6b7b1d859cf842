"""ddim.evaluation.pixel_metrics against answers known by construction."""

import numpy as np
import torch

from ddim.evaluation.distances import statistics
from ddim.evaluation.pixel_metrics import (
    extreme_share,
    pixel_fd,
    pixel_features,
    precision_recall,
    saturated_fraction,
)


def smooth(n, seed=0):
    """n uint8 images (n, 3, 8, 8) of random mid-grey levels: far from 0 and 255."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(60, 190, (n, 3, 1, 1), generator=g)
    return (levels + torch.randint(-5, 6, (n, 3, 8, 8), generator=g)).to(torch.uint8)


def test_pixel_features_are_2x2_pooled_pixels_in_unit_range():
    images = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    images[0, :, :2, :2] = 255
    images[0, :, 2:, 2:] = torch.tensor([0, 255, 0, 255], dtype=torch.uint8).view(2, 2)
    features = pixel_features(images).reshape(3, 2, 2)
    assert np.allclose(features[:, 0, 0], 1.0)
    assert np.allclose(features[:, 1, 1], 0.5)
    assert np.allclose(features[:, 0, 1], 0.0)


def test_pixel_fd_of_a_shifted_set_is_the_squared_mean_shift():
    # same covariance, every feature shifted by δ: FD = D · δ² (D = 3 · 8 · 8 features)
    images = torch.randint(0, 200, (300, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    reference = statistics(pixel_features(images))
    assert abs(pixel_fd(images, reference)) < 1e-8
    shifted = pixel_fd(images + 40, reference)
    assert np.isclose(shifted, 192 * (40 / 255) ** 2, rtol=1e-6)


def test_precision_counts_outliers_by_their_share_only():
    data = smooth(200, seed=1)
    assert precision_recall(data, data) == (1.0, 1.0)  # a set covers itself
    outliers = torch.full((20, 3, 8, 8), 255, dtype=torch.uint8)  # white: far from mid-grey
    samples = torch.cat([data[:180], outliers])
    precision, recall = precision_recall(samples, data)
    assert precision == 0.9  # exactly the 180 good samples out of 200
    assert recall >= 0.9  # at least the 180 data images the samples copy
    far = precision_recall(outliers, data)
    assert far[0] == 0.0


def test_saturation_counts_images_with_mostly_extreme_values():
    images = smooth(10)
    assert saturated_fraction(images) == 0.0
    images[:3] = 255
    images[3, :2] = 0  # two of three channels at 0: 2/3 of the values extreme
    images[4, :1] = 0  # one channel: 1/3, below the threshold
    assert torch.allclose(extreme_share(images[3:5]), torch.tensor([2 / 3, 1 / 3],
                                                                     dtype=torch.float64))
    assert saturated_fraction(images) == 0.4
