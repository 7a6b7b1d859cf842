"""Scoring images against a reference: `compute_scores`, the one entry (the `calc` step, as in
EDM), gives FID and, where the reference keeps features, KID from one pass of Inception; the
caution that goes beside a score of few images.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import torch

from ddim.errors import DdimError
from ddim.evaluation import distances, inception, references, stats_file
from ddim.evaluation.distances import KID_SUBSET_SIZE, KID_SUBSETS, Kid
from ddim.evaluation.inception import Images
from ddim.evaluation.stats_file import FidStats

# Scores of fewer images than this are printed and recorded with a caution.
FEW_IMAGES = 100


class Scores(NamedTuple):
    """FID, and KID where the reference keeps features (else None)."""

    fid: float
    kid: Kid | None


def compute_scores(
    images: Images,
    ref: FidStats | str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    total: int | None = None,
    workers: int = 0,
    progress: bool = True,
    check: bool = True,
) -> Scores:
    """`calc` step: FID and KID (`kernel_inception_distance`, its defaults) of uint8 images
    (tensor, Dataset or generator of batches) against `ref` from one pass of Inception; KID is
    None when `ref` keeps no features (`missing_features` says how to rebuild it)."""
    ref, features = _features_against(images, ref, check, device=device, batch_size=batch_size,
                                      total=total, workers=workers, progress=progress)
    fid = distances.frechet_distance(*distances.statistics(features), ref.mu, ref.sigma)
    kid = (None if ref.features is None
           else distances.kernel_inception_distance(features, ref.features))  # fmt: skip
    return Scores(fid, kid)


def _features_against(images: Images, ref, check: bool, **options) -> tuple[FidStats, np.ndarray]:
    """(the reference stats, loaded and checked; the images' Inception features)."""
    if not isinstance(ref, FidStats):
        ref = stats_file.load_stats(ref, check=check)
    elif check:
        stats_file.check_compatible(ref)
    return ref, inception.inception_features(images, **options)


def kid_from_features(
    features: np.ndarray,
    ref: FidStats | str | os.PathLike,
    *,
    n_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> Kid:
    """KID of Inception features (N, 2048) against the features a stats file (or FidStats)
    keeps; a file made without them is a DdimError saying how to rebuild it."""
    name = "the reference stats"
    if not isinstance(ref, FidStats):
        name, ref = str(ref), stats_file.load_stats(ref)
    if ref.features is None:
        raise DdimError(references.missing_features(ref, name))
    return distances.kernel_inception_distance(features, ref.features, n_subsets=n_subsets,
                                               subset_size=subset_size, seed=seed)


def few_images_caution(n: int) -> str | None:
    """The caution printed and recorded beside scores of fewer than FEW_IMAGES images."""
    if n >= FEW_IMAGES:
        return None
    return (f"a score of {n} images mostly measures how few they are (FID's bias grows as 1/N, "
            "KID's spread over subsets is wide): compare scores only at equal N, and use "
            "thousands of images for figures to report")  # fmt: skip
