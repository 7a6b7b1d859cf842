"""The images an image-to-image run starts from: N images of a dataset, evenly spread through it,
at the model's size, with what identifies them in records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ddim.data import SELECTION, open_dataset, spread_indices, take_images
from ddim.errors import DdimError

__all__ = ["SELECTION", "SelectedImages", "select_images"]


@dataclass(frozen=True)
class SelectedImages:
    """uint8 images (N, C, H, W), their indices in the dataset, and the dataset's fingerprint."""

    images: torch.Tensor
    indices: list[int]
    dataset: dict


def select_images(
    path: str | Path, *, subdir: str | None = None, n: int | None = None, resolution: int
) -> SelectedImages:
    """`n` images of the dataset at `path` (all of them if None), indices ⌊k·size/n⌋ (SELECTION),
    so class-sorted datasets keep every class, fitted to `resolution`."""
    if n is not None and n < 1:
        raise DdimError(f"n must be >= 1, got {n}", argument="n")
    dataset = open_dataset(path, subdir=subdir, resolution=resolution, progress=False)
    indices = spread_indices(len(dataset), n)
    return SelectedImages(take_images(dataset, indices), indices, json.loads(dataset.fingerprint()))
