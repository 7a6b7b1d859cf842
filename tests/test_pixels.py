"""ddim.data.pixels: the uint8 <-> [-1, 1] conversion and fitting images to a size."""


import numpy as np
import pytest
import torch
from conftest import random_images
from PIL import Image

from ddim.data import fit_image, to_model_range, to_uint8


def test_model_range_round_trip_all_256_values():
    values = torch.arange(256, dtype=torch.uint8)
    x = to_model_range(values)
    assert x.dtype == torch.float32
    assert x[0] == -1 and x[255] == 1 and x[51] == pytest.approx(51 / 127.5 - 1)
    assert torch.equal(to_uint8(x), values)


def test_to_uint8_clips_and_rounds():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.999, 1.0, 7.0])
    expected = torch.tensor([0, 0, 128, 255, 255, 255], dtype=torch.uint8)  # 127.5 rounds to even
    assert torch.equal(to_uint8(x), expected)


def test_to_model_range_rejects_floats():
    with pytest.raises(TypeError):
        to_model_range(torch.zeros(3))


def test_fit_image_resizes_bicubic_and_keeps_constants():
    image = Image.fromarray(np.full((10, 16, 3), 77, dtype=np.uint8))
    fitted = fit_image(image, 5)
    assert fitted.size == (5, 5) and (np.asarray(fitted) == 77).all()
    noise = Image.fromarray(random_images(1, 16)[0])
    expected = noise.resize((4, 4), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(fit_image(noise, 4)), np.asarray(expected))
