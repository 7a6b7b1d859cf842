"""ddim.data.datasets: each source kind on tiny synthetic files, hostile pickles, the real zip."""

import io
import os
import pickle
import struct
import warnings
import zipfile

import numpy as np
import pytest
import torch
from conftest import chw, random_images
from PIL import Image

from ddim.data import load_all, open_dataset
from ddim.data.datasets import read_cifar_batch
from ddim.errors import DdimError


def png_bytes(array, fmt="PNG"):
    """Encode an HWC/HW uint8 array as an image file in memory."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write_cifar_folder(root, per_batch=3, protocol=2):
    """A fake cifar-10-batches-py folder; returns {split: images (N, 32, 32, 3)}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    images = {"train": [], "test": []}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batch = random_images(per_batch, 32, seed=k)
        flat = batch.transpose(0, 3, 1, 2).reshape(per_batch, 3072)
        content = {b"batch_label": name.encode(), b"labels": [k % 10] * per_batch,
                   b"data": flat, b"filenames": [b"x.png"] * per_batch}
        with open(folder / name, "wb") as f:
            pickle.dump(content, f, protocol=protocol)
        images["test" if name == "test_batch" else "train"].append(batch)
    return {split: np.concatenate(arrays) for split, arrays in images.items()}


def python2_batch_pickle(flat):
    """The bytes Python 2's cPickle writes for {'data': ndarray, 'labels': [...]} (protocol 2)."""
    def string(text):  # a Python 2 str, which Python 3 reads back as latin-1 text
        raw = text if isinstance(text, bytes) else text.encode("latin1")
        return (b"U" + bytes([len(raw)]) + raw) if len(raw) < 256 else (
            b"T" + struct.pack("<I", len(raw)) + raw)

    n = flat.shape[0]
    dtype = (b"cnumpy\ndtype\n" + string("u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + string("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string("b")
             + b"\x87R" + b"(K\x01K" + bytes([n]) + b"M\x00\x0c\x86" + dtype + b"\x89"
             + string(flat.tobytes()) + b"tb")
    labels = b"](" + b"K\x01" * n + b"e"
    return (b"\x80\x02}(" + string("data") + array + string("labels") + labels + b"u.")


# --- image folders ----------------------------------------------------------------------------


def test_png_folder_round_trips_exactly_in_sorted_order(tmp_path):
    images = random_images(5)
    names = ["b/2.png", "a/1.png", "c.bmp", "a/0.png", "b/1.PNG"]
    for name, image in zip(names, images, strict=True):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        fmt = "BMP" if name.endswith("bmp") else "PNG"
        Image.fromarray(image).save(tmp_path / name, format=fmt)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = open_dataset(tmp_path)
    assert (len(ds), ds.resolution, ds.channels) == (5, 8, 3)
    order = sorted(range(5), key=lambda k: names[k])
    for i, k in enumerate(order):
        assert ds[i].dtype == torch.uint8
        assert torch.equal(ds[i], chw(images[k]))
        assert ds.item_name(i) == str(tmp_path / names[k])
    assert len(open_dataset(tmp_path, subdir="b")) == 2


def test_grayscale_and_rgba_become_rgb(tmp_path):
    gray = random_images(1)[0, :, :, 0]
    rgba = np.random.default_rng(1).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "0.png")
    Image.fromarray(rgba).save(tmp_path / "1.png")
    with pytest.warns(UserWarning, match="converting L images to RGB"):
        ds = open_dataset(tmp_path)  # decodes the first image
    assert torch.equal(ds[0], torch.from_numpy(gray)[None].expand(3, 8, 8))
    with pytest.warns(UserWarning, match="RGBA images to RGB"):
        assert torch.equal(ds[1], chw(rgba[:, :, :3]))


def test_mixed_sizes_name_the_file_and_suggest_resolution(tmp_path):
    Image.fromarray(random_images(1, 8)[0]).save(tmp_path / "a.png")
    Image.fromarray(random_images(1, 6)[0]).save(tmp_path / "b.png")
    ds = open_dataset(tmp_path)
    with pytest.raises(DdimError, match=r"b\.png is 6x6 .*a\.png is 8x8.*resolution"):
        ds[1]
    with pytest.raises(DdimError, match=r"b\.png") as info:
        load_all(ds, progress=False)
    assert "\n" not in str(info.value)
    assert open_dataset(tmp_path, resolution=4).resolution == 4
    assert load_all(open_dataset(tmp_path, resolution=4), progress=False).shape == (2, 3, 4, 4)


def test_non_square_needs_resolution_then_center_crops(tmp_path):
    wide = np.random.default_rng(2).integers(0, 256, (4, 7, 3), dtype=np.uint8)  # H=4, W=7
    Image.fromarray(wide).save(tmp_path / "wide.png")
    with pytest.raises(DdimError, match=r"wide\.png is 7x4, not square.*resolution"):
        open_dataset(tmp_path)
    ds = open_dataset(tmp_path, resolution=4)
    assert torch.equal(ds[0], chw(wide[:, 1:5]))  # left = (7 - 4) // 2 = 1, no resize needed
    assert open_dataset(tmp_path, resolution=4, crop="stretch")[0].shape == (3, 4, 4)


def test_corrupt_image_raises_naming_it_or_is_skipped(tmp_path):
    for k, image in enumerate(random_images(3)):
        Image.fromarray(image).save(tmp_path / f"{k}.png")
    (tmp_path / "1b.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    ds = open_dataset(tmp_path)
    assert len(ds) == 4
    with pytest.raises(DdimError, match=r"cannot read image .*1b\.png"):
        ds[2]
    with pytest.raises(DdimError, match=r"1b\.png"):
        load_all(ds, progress=False)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable .*1b\.png"):
        skipping = open_dataset(tmp_path, on_error="skip", progress=False)
    assert (len(skipping), skipping.skipped) == (3, 1)
    assert load_all(skipping, progress=False).shape == (3, 3, 8, 8)


def test_missing_empty_and_unknown_paths(tmp_path):
    with pytest.raises(DdimError, match="not found"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DdimError, match="no images"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(DdimError, match="no folder 'train'"):
        open_dataset(tmp_path / "empty", subdir="train")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DdimError, match=r"x\.txt is not a folder"):
        open_dataset(tmp_path / "x.txt")


@pytest.mark.parametrize("kwargs", [dict(resolution=0), dict(crop="random"), dict(on_error="x")])
def test_bad_options(tmp_path, kwargs):
    with pytest.raises(DdimError):
        open_dataset(tmp_path, **kwargs)


# --- zips -------------------------------------------------------------------------------------


def write_zip(path, images):
    """A zip with train/<class>/k.png and test/k.png, plus a macOS resource fork to ignore."""
    with zipfile.ZipFile(path, "w") as archive:
        for k, image in enumerate(images):
            folder = f"train/c{k % 2}" if k < 4 else "test"
            archive.writestr(f"{folder}/{k}.png", png_bytes(image))
        archive.writestr("__MACOSX/train/._0.png", b"junk")
        archive.writestr("train/readme.txt", b"text")


def test_zip_subfolder_round_trips_and_pickles(tmp_path):
    images = random_images(6)
    write_zip(tmp_path / "d.zip", images)
    ds = open_dataset(tmp_path / "d.zip", subdir="train")
    assert len(ds) == 4 and len(open_dataset(tmp_path / "d.zip", subdir="test")) == 2
    assert [ds.item_name(i).split(" in ")[0] for i in range(4)] == [
        "train/c0/0.png", "train/c0/2.png", "train/c1/1.png", "train/c1/3.png"]
    assert torch.equal(ds[1], chw(images[2]))
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[3], chw(images[3]))
    with pytest.raises(DdimError, match="no folder 'val'"):
        open_dataset(tmp_path / "d.zip", subdir="val")


def test_zip_parallel_load_equals_serial(tmp_path):
    images = random_images(300, 4)
    with zipfile.ZipFile(tmp_path / "many.zip", "w") as archive:
        for k, image in enumerate(images):
            archive.writestr(f"{k:04d}.png", png_bytes(image))
    ds = open_dataset(tmp_path / "many.zip")
    serial = load_all(ds, progress=False)
    assert torch.equal(serial, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.equal(load_all(ds, workers=2, progress=False), serial)


def test_corrupt_zip_member_names_member_and_zip(tmp_path):
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as archive:
        archive.writestr("a.png", png_bytes(random_images(1)[0]))
        archive.writestr("b.png", b"garbage")
    ds = open_dataset(tmp_path / "d.zip")
    with pytest.raises(DdimError, match=r"b\.png in .*d\.zip"):
        ds[1]


def test_not_a_zip(tmp_path):
    (tmp_path / "fake.zip").write_bytes(b"definitely not a zip")
    with pytest.raises(DdimError, match=r"fake\.zip is not a readable zip"):
        open_dataset(tmp_path / "fake.zip")


# --- npz and CIFAR-10 batches -----------------------------------------------------------------


def test_npz_round_trip_keys_and_checks(tmp_path):
    images = random_images(4)
    np.savez(tmp_path / "s.npz", images)
    ds = open_dataset(tmp_path / "s.npz")
    assert (len(ds), ds.resolution) == (4, 8)
    assert torch.equal(load_all(ds, progress=False), torch.from_numpy(images).permute(0, 3, 1, 2))
    assert ds.item_name(2).endswith("s.npz[2]")
    np.savez(tmp_path / "k.npz", samples=images[:, :, :, 0])
    with pytest.warns(UserWarning, match="to RGB"):
        gray = open_dataset(tmp_path / "k.npz")
    assert torch.equal(gray[1], torch.from_numpy(images[1, :, :, 0])[None].expand(3, 8, 8))
    np.savez(tmp_path / "f.npz", images.astype(np.float32))
    with pytest.raises(DdimError, match="must be uint8"):
        open_dataset(tmp_path / "f.npz")
    with pytest.raises(DdimError, match="no array 'x'"):
        open_dataset(tmp_path / "s.npz", subdir="x")


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_cifar_folder_splits_round_trip(tmp_path, protocol):
    expected = write_cifar_folder(tmp_path, protocol=protocol)
    train = open_dataset(tmp_path / "cifar-10-batches-py", subdir="train")
    assert (len(train), train.resolution, train.kind) == (15, 32, "cifar")
    assert torch.equal(load_all(train, progress=False),
                       torch.from_numpy(expected["train"]).permute(0, 3, 1, 2))
    assert train.item_name(4).endswith("data_batch_2[1]")
    test = open_dataset(tmp_path, subdir="test")  # the parent folder works too
    assert torch.equal(test[2], chw(expected["test"][2]))
    with pytest.raises(DdimError, match="holds train/ and test/"):  # never both at once
        open_dataset(tmp_path)
    assert open_dataset(tmp_path, subdir="test", resolution=16)[0].shape == (3, 16, 16)


def test_cifar_python2_pickle_format(tmp_path):
    flat = random_images(3, 32).transpose(0, 3, 1, 2).reshape(3, 3072)
    (tmp_path / "test_batch").write_bytes(python2_batch_pickle(flat))
    images = read_cifar_batch(tmp_path / "test_batch")
    assert np.array_equal(images.transpose(0, 3, 1, 2).reshape(3, 3072), flat)


class Hostile:
    """Unpickling this runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_cifar_pickle_is_refused(tmp_path):
    write_cifar_folder(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Hostile(marker)}, f)
    with pytest.raises(DdimError, match=r"test_batch.*refusing to load global"):
        open_dataset(tmp_path, subdir="test")
    assert not marker.exists()
    assert len(open_dataset(tmp_path, subdir="train")) == 15


def test_cifar_batch_without_uint8_data_is_rejected(tmp_path):
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.float32)}, f)
    with pytest.raises(DdimError, match="not a CIFAR-10 batch"):
        open_dataset(tmp_path, subdir="test")


# --- the real CIFAR-10 JPEG zip ---------------------------------------------------------------


def test_real_cifar10_jpeg_zip_test_split(cifar10_jpeg_zip):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # real CIFAR JPEGs are RGB: no conversion warnings
        ds = open_dataset(cifar10_jpeg_zip, subdir="test")
        assert (len(ds), ds.resolution, ds.channels) == (10_000, 32, 3)
        for i in (0, 4_321, 9_999):
            image = ds[i]
            assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
            assert image.float().std() > 1  # a real picture, not a constant
    assert ds.item_name(0) == f"test/airplane/0000.jpg in {cifar10_jpeg_zip}"
    assert ds.item_name(9_999).startswith("test/truck/")


def test_spread_indices_cover_every_class_of_a_sorted_dataset():
    from ddim.data import spread_indices

    assert spread_indices(10, None) == list(range(10)) == spread_indices(10, 25)
    assert spread_indices(10, 5) == [0, 2, 4, 6, 8]
    # 10 classes of 1,000 images stored class by class, as the CIFAR-10 zip is
    picked = spread_indices(10_000, 200)
    assert len(set(picked)) == 200 and picked == sorted(picked)
    assert np.bincount([i // 1000 for i in picked]).tolist() == [20] * 10


def test_n_images_of_a_class_sorted_zip_are_spread_over_its_folders(tmp_path):
    """`--n` on a dataset: every class folder contributes, not just the first (CLI encode)."""
    from conftest import make_blobs

    from ddim.sampling import select_images

    path = tmp_path / "sorted.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for c in range(4):
            for k, image in enumerate(make_blobs(n=5, size=8, seed=c).permute(0, 2, 3, 1).numpy()):
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, format="PNG")
                archive.writestr(f"test/class{c}/{k:04d}.png", buffer.getvalue())

    indices = select_images(path, subdir="test", n=4, resolution=8).indices
    assert indices == [0, 5, 10, 15]  # one image of each of the four class folders
