"""Images out: uint8 images written as picture grids (PNG or JPEG, as the name's suffix says),
folders of PNGs, and `.npz` files (NHWC, key `arr_0`), each file atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddim.errors import DdimError
from ddim.files import atomic_write

# The picture formats a grid is written in, by the name's suffix (any case), with PIL's options.
PICTURE_FORMATS = {".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 95}),
                   ".jpeg": ("JPEG", {"quality": 95})}  # fmt: skip


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


def picture_format(path: str | os.PathLike) -> tuple[str, dict]:
    """(PIL format, its options) that a picture's name asks for: PNG for .png, JPEG for .jpg and
    .jpeg; any other suffix is a DdimError naming those."""
    suffix = Path(path).suffix.lower()
    if suffix not in PICTURE_FORMATS:
        raise DdimError(
            f"cannot write a picture to {str(path)!r}: its suffix names no format ddim writes; "
            f"give a .png name, or .jpg/.jpeg for JPEG"
        )
    return PICTURE_FORMATS[suffix]


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Write uint8 images (N, C, H, W) as one grid, PNG or JPEG as the name's suffix says
    (`picture_format`); parent folders are created."""
    kind, options = picture_format(path)
    picture = _pil(grid(images, nrow))
    return atomic_write(path, lambda tmp: picture.save(tmp, format=kind, **options))


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
