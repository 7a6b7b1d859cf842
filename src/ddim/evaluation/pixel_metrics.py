"""Cheap sample-quality measures in pixel space, for small images and models (no Inception).

- pixel FD: Fréchet distance between Gaussians fitted to 2×2-average-pooled pixels in [0, 1] of
  two image sets. Like FID it sees means and covariances only, so a few wild images (saturated
  colour, noise) inflate it far beyond their share; it is blind to anything a Gaussian cannot
  express (shapes drawn right but in the wrong places look the same to it).
- precision and recall (Kynkäänniemi et al. 2019, k = 3) in the same pooled pixel space: the share
  of samples that fall inside the data's k-nearest-neighbour balls, and the share of data inside
  the samples' balls. A bad image costs precision exactly its share, so outliers cannot dominate.
- saturated share: images with more values at 0 or 255 than `SATURATION` of their values. The
  threshold sits far above what any data image reaches (`saturated_fraction` of the data is shown
  beside it); such images are what deterministic samplers make of a network whose ε error is large
  at high t.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ddim.evaluation import distances

SATURATION = 0.5  # an image is saturated when over half its values are 0 or 255
K_NEAREST = 3


def pixel_features(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, 3, H, W) → (N, 3·(H/2)·(W/2)) float64: 2×2 average-pooled pixels in [0, 1]."""
    x = F.avg_pool2d(images.float() / 255, 2)
    return x.flatten(1).double().cpu().numpy()


def pixel_fd(images: torch.Tensor, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance between Gaussians fitted to the pixel features of `images` and the
    reference (mean, covariance) from `statistics(pixel_features(data))`."""
    mu, sigma = distances.statistics(pixel_features(images))
    return distances.frechet_distance(mu, sigma, *reference)


def _kth_neighbour_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row."""
    pairwise = torch.cdist(features, features)
    return pairwise.kthvalue(k + 1, dim=1).values  # the 1st is the row itself, at 0


def _inside_balls(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """The share of points within radius of at least one centre."""
    return float((torch.cdist(points, centres) <= radii[None, :]).any(dim=1).double().mean())


def precision_recall(
    samples: torch.Tensor, data: torch.Tensor, k: int = K_NEAREST
) -> tuple[float, float]:
    """(precision, recall) of uint8 samples against uint8 data, k-NN manifolds in pixel space."""
    fake = torch.from_numpy(pixel_features(samples))
    real = torch.from_numpy(pixel_features(data))
    precision = _inside_balls(fake, real, _kth_neighbour_radii(real, k))
    recall = _inside_balls(real, fake, _kth_neighbour_radii(fake, k))
    return precision, recall


def extreme_share(images: torch.Tensor) -> torch.Tensor:
    """Per image, the share of its uint8 values that are exactly 0 or 255."""
    extreme = (images == 0) | (images == 255)
    return extreme.flatten(1).double().mean(dim=1)


def saturated_fraction(images: torch.Tensor, threshold: float = SATURATION) -> float:
    """The share of images with more than `threshold` of their values at 0 or 255."""
    return float((extreme_share(images) > threshold).double().mean())
