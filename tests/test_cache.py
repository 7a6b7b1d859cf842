"""ddim.data.cache: decoding a dataset once, the disk cache and its invalidation."""

import os

import pytest
import torch
from conftest import chw, random_images
from PIL import Image

import ddim.data.cache as cache_module
from ddim.data import load_all, open_dataset


def test_cache_is_written_reused_and_invalidated(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    images = random_images(3)
    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{k}.png")
    cache = tmp_path / "cache"
    first = load_all(open_dataset(folder), cache_dir=cache, progress=False)
    assert len(list(cache.glob("imgs-*.safetensors"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "_decode_all", no_decoding)
        assert torch.equal(load_all(open_dataset(folder), cache_dir=cache), first)
    Image.fromarray(images[0][::-1].copy()).save(folder / "1.png")  # content, size or mtime change
    os.utime(folder / "1.png", ns=(1, 1))
    again = load_all(open_dataset(folder), cache_dir=cache, progress=False)
    assert torch.equal(again[1], chw(images[0][::-1].copy()))
    assert len(list(cache.glob("imgs-*.safetensors"))) == 2


def test_a_cache_that_cannot_be_written_is_a_warning_and_the_images_are_returned(tmp_path):
    """The cache is optional: a folder that cannot be made (here below a file, which no user,
    root included, can write into) warns in one line and the decoded images come back."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    images = random_images(3)
    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{k}.png")
    (tmp_path / "file").write_text("not a folder")
    with pytest.warns(UserWarning, match="decoded images not cached") as caught:
        decoded = load_all(open_dataset(folder), cache_dir=tmp_path / "file" / "cache",
                           progress=False)  # fmt: skip
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert torch.equal(decoded[2], chw(images[2]))
