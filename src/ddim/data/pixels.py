"""The one conversion between uint8 images and the model's [-1, 1], and fitting images to a size.

Images at rest are uint8 (N, C, H, W); only these functions turn them into floats and back.
"""

from __future__ import annotations

from typing import Literal

import torch
from PIL import Image

Crop = Literal["center", "stretch"]


# x / 127.5 - 1 for every uint8 value, computed once on the CPU. Looking values up rather than
# dividing on the images' device gives the same floats everywhere: CUDA divides by a scalar as a
# multiplication by its reciprocal, one unit in the last place away from the CPU's quotient.
_MODEL_RANGE = torch.arange(256, dtype=torch.float32) / 127.5 - 1.0


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """Map uint8 images {0..255} to float32 in [-1, 1] as x / 127.5 - 1 (the CPU's floats on
    every device), on the input's device."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_model_range expects uint8 images, got {images.dtype}")
    return _MODEL_RANGE.to(images.device)[images.long()]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map float images to uint8 as round((clip(x, -1, 1) + 1) * 127.5), on the input's device."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def fit_image(image: Image.Image, resolution: int, crop: Crop = "center") -> Image.Image:
    """Crop to the centred square min(W, H)² (crop="center"), then resize to R² with PIL bicubic.

    The square's corner is ((W - side) // 2, (H - side) // 2). Pillow's bicubic resize is
    antialiased (its kernel widens by the downscale factor), as in the usual CelebA/LSUN pipelines
    (centre crop, then resize). crop="stretch" skips the crop and squashes the aspect ratio.
    An image already R×R is returned unchanged.
    """
    width, height = image.size
    if crop == "center" and width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return image
