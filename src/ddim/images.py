"""Images out: uint8 images written as PNG grids, folders of PNGs, and `.npz` files (NHWC, key
`arr_0`), each file atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddim.files import atomic_write


def grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile uint8 images (N, C, H, W) into one uint8 HWC array, `nrow` per row (default ~√N)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    canvas = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), np.uint8)
    pixels = images.permute(0, 2, 3, 1).cpu().numpy()
    for k in range(n):
        top, left = padding + (k // nrow) * (h + padding), padding + (k % nrow) * (w + padding)
        canvas[top : top + h, left : left + w] = pixels[k]
    return canvas


def _pil(array: np.ndarray) -> Image.Image:
    """A PIL image from an HWC uint8 array with 1 or 3 channels."""
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Write uint8 images (N, C, H, W) as one PNG grid; parent folders are created."""
    picture = _pil(grid(images, nrow))
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def save_pngs(images: torch.Tensor, folder: str | os.PathLike, first_index: int = 0) -> list[Path]:
    """Write uint8 images (N, C, H, W) as `folder/{index:06d}.png`, index from `first_index`."""
    folder = Path(folder)
    paths = []
    for k, image in enumerate(images.permute(0, 2, 3, 1).cpu().numpy()):
        picture = _pil(image)
        path = folder / f"{first_index + k:06d}.png"
        paths.append(atomic_write(path, lambda tmp, p=picture: p.save(tmp, format="PNG")))
    return paths


def save_npz(images: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write uint8 images (N, C, H, W) as an `.npz` of NHWC uint8 under `arr_0`, atomically."""
    pixels = images.permute(0, 2, 3, 1).cpu().numpy()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" to the name
            np.savez(f, arr_0=pixels)

    return atomic_write(path, write)
