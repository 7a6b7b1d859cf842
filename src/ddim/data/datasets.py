"""Image datasets: uint8 RGB images read from a folder, a zip, CIFAR-10 batches or an .npz.

Sources (`open_dataset` tells them apart): the CIFAR-10 python batches folder, a folder of images, a
zip of images read in place, and an ``.npz`` of uint8 NHWC images (how generated samples are
stored). Every item is a uint8 RGB tensor (3, R, R); training and FID read the same `ImageDataset`.
`load_image_files` reads loose image files the same way (for the commands that take a few).

Files come from outside, so reading them is defensive, and every failure is a DdimError naming the
file: 16-bit images are scaled to 8 bits (not clipped to white), images of more pixels than
PIL's decompression-bomb limit are refused, encrypted zips, zip members compressed with methods
Python cannot read (Deflate64) and members declaring more than `MAX_MEMBER_BYTES` uncompressed
are refused when the zip is opened, and an .npz array's header is checked against its size
before anything is allocated (`ddim.files.npz`).

What is read is one split: a dataset holding a `train` folder beside a `test` or validation
folder (or CIFAR-10's train and test batches) is refused unless `subdir` picks one, so test
images never leak into training or into a "train" reference file (`_check_one_split`).
"""

from __future__ import annotations

import bisect
import codecs
import hashlib
import io
import json
import os
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ddim.data.named import CIFAR_FOLDER, CIFAR_SPLITS, is_dataset_name, named_dataset_folder
from ddim.data.pixels import Crop, fit_image
from ddim.errors import DdimError
from ddim.files import load_npz_arrays, npz_headers
from ddim.hub import DATA
from ddim.progress import progress_bar

CACHE_VERSION = 1  # part of a dataset's fingerprint, the key of its decoded cache (data.cache)
OnError = Literal["raise", "skip"]
Kind = Literal["cifar", "folder", "zip", "npz"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# What a broken image file can raise while being read and decoded (PIL, zip member CRC, deflate).
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, zipfile.BadZipFile, zlib.error,
    NotImplementedError, Image.DecompressionBombError, Image.DecompressionBombWarning,
)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# More than any image file under PIL's decompression-bomb limit (89 Mpx x 8 bytes, uncompressed
# 16-bit RGBA); a zip member declaring more would inflate to gigabytes in memory.
MAX_MEMBER_BYTES = 1 << 30
# Folder names of the splits that must not be read together.
TRAIN_SPLIT, HELD_OUT_SPLITS = "train", ("test", "val", "valid", "validation")


def decode_image(source, name: str) -> Image.Image:
    """Decode one image file (a path or a stream) completely, 16-bit scaled to 8 bits; a broken
    file, or one of more pixels than PIL's decompression-bomb limit, is a DdimError naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                image.load()
                return _eight_bit(image)
    except _DECODE_ERRORS as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DdimError(f"cannot read image {name}: {message}") from None


def _eight_bit(image: Image.Image) -> Image.Image:
    """An image with 8-bit channels: 16-bit (and 32-bit integer) gray keeps its high byte, the
    way PIL reads 16-bit RGB; other modes are returned as they are (a copy)."""
    if image.mode not in _SIXTEEN_BIT_MODES:
        return image.copy()
    values = np.asarray(image).astype(np.int64)
    return Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")


# --- the dataset ------------------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset):
    """Uint8 RGB images (3, R, R) from one source, in a fixed order; build it with `open_dataset`.

    Files are decoded lazily, one per item; CIFAR batches and .npz arrays are held in memory.
    Every image becomes RGB: grayscale is replicated, alpha is dropped (not composited), palette
    and CMYK images are converted by PIL; a warning says so the first time each mode is seen.
    Without `resolution` every image must be square and the size of the first; with it, each is
    passed through `fit_image`. A zip is opened lazily once per process, so the dataset can be
    pickled or forked into DataLoader workers.
    """

    def __init__(
        self,
        kind: Kind,
        path: Path,
        *,
        subdir: str | None = None,
        members: Sequence[str] = (),
        array: np.ndarray | None = None,
        parts: Sequence[tuple[str, int]] = (),
        files: Sequence[Path] = (),
        resolution: int | None = None,
        crop: Crop = "center",
        on_error: OnError = "raise",
        progress: bool = True,
        archive: zipfile.ZipFile | None = None,
        name: str | None = None,
    ):
        self.kind, self.path, self.subdir, self.name = kind, path, subdir, name
        self._members = tuple(members)  # file kinds: posix names relative to the folder or zip
        self._array = array  # array kinds: (N, H, W, 3) uint8
        self._parts = tuple(parts)  # array kinds: (label, count) of each file, for naming items
        self._starts = np.cumsum([0] + [count for _, count in parts]).tolist()
        self._files = tuple(files)  # the files whose size and mtime key the cache
        self._target, self._crop = resolution, crop
        self._zip = archive  # zip kind: this process's open handle (from open_dataset, or lazy)
        self._zip_pid = os.getpid() if archive is not None else -1
        self._modes_seen: set[str] = set()
        self.skipped = 0
        if on_error == "skip":
            self._drop_unreadable(progress)
        if len(self) == 0:
            raise DdimError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {self.source}")
        self.resolution = self._probe()

    @property
    def channels(self) -> int:
        """Channels of every item: always 3 (RGB)."""
        return 3

    @property
    def source(self) -> str:
        """The name or path (and sub-folder or key) this dataset reads, for messages and records."""
        where = self.name or str(self.path)
        return where if self.subdir is None else f"{where} [{self.subdir}]"

    def __len__(self) -> int:
        """Number of images."""
        return len(self._members) if self._array is None else len(self._array)

    def __getitem__(self, i: int) -> torch.Tensor:
        """Image i as a uint8 tensor (3, R, R)."""
        i = range(len(self))[i]
        if self._array is None:
            image = np.asarray(self._sized(self._read(i), i))
        else:
            image = self._array[i]
            if image.shape[:2] != (self.resolution, self.resolution):
                image = np.asarray(fit_image(Image.fromarray(image), self.resolution, self._crop))
        return torch.from_numpy(image.transpose(2, 0, 1).copy())

    def __repr__(self) -> str:
        """Kind, source, count and item shape."""
        r = self.resolution
        return f"ImageDataset({self.kind} {self.source}, {len(self)} images, 3x{r}x{r})"

    def item_name(self, i: int) -> str:
        """Name item i for messages: its file, its member and zip, or its array file and index."""
        i = range(len(self))[i]
        if self.kind == "zip":
            return f"{self._members[i]} in {self.path}"
        if self._array is None:
            return str(self.path / self._members[i])
        k = bisect.bisect_right(self._starts, i) - 1
        return f"{self._parts[k][0]}[{i - self._starts[k]}]"

    def fingerprint(self) -> str:
        """JSON naming the source files (path, size, mtime), the items and the decoding options."""
        digest = hashlib.sha256()
        for file in self._files or [self.path / m for m in self._members]:
            stat = file.stat()
            digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        digest.update("\n".join(self._members).encode())
        key = {
            "version": CACHE_VERSION, "kind": self.kind, "path": str(self.path.resolve()),
            "subdir": self.subdir, "items": len(self), "resolution": self.resolution,
            "crop": self._crop if self._target is not None else None, "files": digest.hexdigest(),
        }
        return json.dumps(key, sort_keys=True)

    def as_array(self) -> torch.Tensor | None:
        """All items as one (N, 3, R, R) uint8 tensor when no decoding is needed, else None."""
        if self._array is None or self._array.shape[1:3] != (self.resolution, self.resolution):
            return None
        return torch.from_numpy(self._array).permute(0, 3, 1, 2).contiguous()

    def close(self) -> None:
        """Close this process's zip handle, if any."""
        if self._zip is not None:
            self._zip.close()
        self._zip, self._zip_pid = None, -1

    def __getstate__(self) -> dict:
        """Pickle without the open zip handle (each worker opens its own)."""
        return dict(self.__dict__, _zip=None, _zip_pid=-1)

    def _zipfile(self) -> zipfile.ZipFile:
        """This process's handle on the zip, opened on first use and never shared across a fork."""
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip, self._zip_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip

    def _read(self, i: int) -> Image.Image:
        """Decode file i to a loaded RGB image; an unreadable file raises DdimError naming it."""
        member = self._members[i]
        if self.kind != "zip":
            return self._rgb(decode_image(self.path / member, self.item_name(i)))
        try:
            stream = io.BytesIO(read_member(self._zipfile(), member))
        except _DECODE_ERRORS as exc:
            raise DdimError(f"cannot read image {self.item_name(i)}: {exc}") from None
        return self._rgb(decode_image(stream, self.item_name(i)))

    def _rgb(self, image: Image.Image) -> Image.Image:
        """Convert to RGB, warning the first time each other mode is seen."""
        if image.mode == "RGB":
            return image
        if image.mode not in self._modes_seen:
            self._modes_seen.add(image.mode)
            warnings.warn(f"converting {image.mode} images to RGB in {self.source}", stacklevel=3)
        return image.convert("RGB")

    def _sized(self, image: Image.Image, i: int) -> Image.Image:
        """Fit the image to the requested resolution, or check it has the dataset's size."""
        if self._target is not None:
            return fit_image(image, self._target, self._crop)
        if image.size != (self.resolution, self.resolution):
            raise DdimError(
                f"{self.item_name(i)} is {image.size[0]}x{image.size[1]} but {self.item_name(0)} "
                f"is {self.resolution}x{self.resolution}; pass resolution=N to center-crop and "
                "resize every image to NxN", argument="resolution",
            )  # fmt: skip
        return image

    def _probe(self) -> int:
        """Decode the first image and return the dataset's resolution (square images required)."""
        if self._target is not None:
            if self._array is None:
                self._read(0)
            return self._target
        if self._array is not None:
            height, width = self._array.shape[1:3]
        else:
            width, height = self._read(0).size
        if width != height:
            raise DdimError(
                f"{self.item_name(0)} is {width}x{height}, not square; pass resolution=N to "
                "center-crop and resize every image to NxN", argument="resolution",
            )  # fmt: skip
        return width

    def _drop_unreadable(self, progress: bool) -> None:
        """Decode every file once and drop the unreadable ones, counting them in `skipped`."""
        keep, first_error = [], None
        for i in progress_bar(range(len(self._members)), desc=f"checking {self.path.name}",
                              unit="img", disable=not progress or self._array is not None):
            try:
                self._read(i)
                keep.append(self._members[i])
            except DdimError as exc:
                first_error = first_error or str(exc)
        self.skipped = len(self._members) - len(keep)
        self._members = tuple(keep)
        if self.skipped:
            warnings.warn(f"skipped {self.skipped} unreadable image(s) in {self.source}; "
                          f"first: {first_error}", stacklevel=3)


# --- opening a dataset ------------------------------------------------------------------------


def open_dataset(
    path: str | os.PathLike,
    *,
    subdir: str | None = None,
    resolution: int | None = None,
    crop: Crop = "center",
    on_error: OnError = "raise",
    progress: bool = True,
    channels: int = 3,
) -> ImageDataset:
    """Open images from a cifar-10-batches-py folder, an image folder, a zip or an .npz file, or
    a dataset by name (`cifar10`: fetched and unpacked into the cache once, `ddim.data.named`;
    a file or folder of that name, where there is one, comes first).

    subdir picks a part: "train"/"test" of CIFAR-10 (None = the only split there is), a
    sub-folder of a folder or zip (None = all of it, recursively, sorted by path), or the array
    key of an .npz (None = "arr_0" or its only array); what is read must not hold a train folder
    beside a test or validation folder. on_error="skip" decodes every file once up front and
    drops unreadable ones (count in `.skipped`, with a warning); "raise" fails on the first one.
    `channels` is what the caller's network takes (`data.channels`): every item is RGB, so
    anything but 3 is refused here rather than by the network's first layer.
    """
    _check_options(resolution, crop, on_error)
    if channels != 3:
        raise DdimError(
            f"channels={channels!r} (data.channels) was asked of {path}, but ddim's datasets "
            "give RGB images (3 channels): a network of other channels cannot read them"
        )
    options = dict(resolution=resolution, crop=crop, on_error=on_error, progress=progress)
    if not Path(path).exists() and is_dataset_name(str(path)):  # a file of that name comes first
        return _open_named(str(path), subdir, options)
    path = Path(path)
    if not path.exists():
        raise DdimError(f"dataset not found: {path} (a folder, zip or .npz, or a dataset name: "
                        f"{', '.join(DATA)})")
    if path.is_dir():
        cifar = _find_cifar_folder(path)
        if cifar is not None:
            return _open_cifar(cifar, subdir, options)
        root = path if subdir is None else path / subdir
        if not root.is_dir():
            raise DdimError(f"no folder {subdir!r} in {path}")
        members = _folder_members(root)
        _check_one_split(members, path, subdir)
        return ImageDataset("folder", root, members=members, **options)
    suffix = path.suffix.lower()
    if suffix == ".zip":
        archive = _open_zip(path)
        members = _zip_members(archive, path, subdir)
        prefix = "" if subdir is None else subdir.strip("/") + "/"
        _check_one_split([m.removeprefix(prefix) for m in members], path, subdir)
        return ImageDataset("zip", path, subdir=subdir, members=members, files=[path],
                            archive=archive, **options)
    if suffix == ".npz":
        key, array = _load_npz(path, subdir)
        parts = [(str(path), len(array))]
        return ImageDataset("npz", path, subdir=key, array=array, parts=parts, files=[path],
                            **options)
    raise DdimError(f"{path} is not a folder, .zip or .npz of images nor a {CIFAR_FOLDER} folder")


def _open_named(name: str, subdir: str | None, options: dict) -> ImageDataset:
    """A dataset by name (`ddim.data.named`), its split checked before anything is fetched."""
    if subdir is None:
        _refuse_mixed_splits(Path(name), None, list(CIFAR_SPLITS))
    if subdir not in CIFAR_SPLITS:
        raise DdimError(f"subdir for {name} must be 'train' or 'test', got {subdir!r}")
    folder = named_dataset_folder(name, progress=options["progress"])
    return _open_cifar(folder, subdir, options, name=name)


def _check_options(resolution: int | None, crop: str, on_error: str) -> None:
    """Reject bad option values with a DdimError naming the value."""
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int)
                                   or resolution < 1):
        raise DdimError(f"resolution must be a positive integer, got {resolution!r}")
    if crop not in ("center", "stretch"):
        raise DdimError(f"crop must be 'center' or 'stretch', got {crop!r}")
    if on_error not in ("raise", "skip"):
        raise DdimError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _is_image_name(name: str) -> bool:
    """True for image file names, ignoring macOS resource forks (__MACOSX/, ._name)."""
    base = name.rsplit("/", 1)[-1]
    return (base.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith("._")
            and not name.startswith("__MACOSX/"))


def _check_one_split(members: Sequence[str], where: Path, subdir: str | None) -> None:
    """Refuse to read a train folder together with a test or validation folder beside it
    (`members`: the image files read, relative to `subdir` of `where`)."""
    children: dict[str, set[str]] = {}
    for member in members:
        parts = member.split("/")[:-1]
        for depth in range(len(parts)):
            children.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    for parent, names in sorted(children.items()):
        held_out = sorted(n for n in names if n.lower() in HELD_OUT_SPLITS)
        train = sorted(n for n in names if n.lower() == TRAIN_SPLIT)
        if train and held_out:
            _refuse_mixed_splits(where, subdir, [f"{parent}/{n}".lstrip("/") for n in
                                                 (*train, *held_out)])


def _refuse_mixed_splits(where: Path, subdir: str | None, splits: list[str]) -> None:
    """The error for a dataset read whole that holds more than one split."""
    inside = "" if subdir is None else f" [{subdir}]"
    names = " and ".join(f"{s}/" for s in splits)
    pick = splits[0] if subdir is None else f"{subdir.strip('/')}/{splits[0]}"
    raise DdimError(
        f"{where}{inside} holds {names}: reading it whole would mix the splits (test images in "
        f"training, in a train reference); choose one with subdir={pick!r} "
        f"(--subdir {pick} on the command line)"
    )


def _folder_members(root: Path) -> tuple[str, ...]:
    """Image files under root, recursively, as sorted posix paths relative to root."""
    names = (p.relative_to(root).as_posix() for p in root.rglob("*") if _is_image_name(p.name))
    return tuple(sorted(name for name in names if (root / name).is_file()))


def _open_zip(path: Path) -> zipfile.ZipFile:
    """Open a zip for reading; a file that is not a zip raises DdimError naming it."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DdimError(f"{path} is not a readable zip file ({exc})") from exc


def read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    """A zip member's bytes, inflated in bounded steps to at most the size its header declares
    (which `_zip_members` caps): a member whose data inflates past that stops there, whatever
    its compressed stream holds, and fails its CRC check. (`ZipFile.read` inflates up to 2 GiB
    in one step before it truncates to the declared size.)"""
    info = archive.getinfo(name)
    parts, left = [], info.file_size
    with archive.open(info) as member:
        while left > 0:
            block = member.read(min(left, 1 << 20))
            if not block:
                break
            parts.append(block)
            left -= len(block)
        member.read(1)  # at the declared end: the CRC is checked here
    return b"".join(parts)


def _zip_members(archive: zipfile.ZipFile, path: Path, subdir: str | None) -> tuple[str, ...]:
    """Image members of the zip at path (under subdir/ if given), sorted; each must be readable
    by Python's zipfile: not encrypted, stored or compressed with Deflate, BZIP2 or LZMA."""
    names = archive.namelist()
    prefix = "" if subdir is None else subdir.strip("/") + "/"
    if prefix and not any(name.startswith(prefix) for name in names):
        raise DdimError(f"no folder {subdir!r} in {path}")
    members = tuple(sorted(n for n in names if n.startswith(prefix) and _is_image_name(n)))
    for name in members:
        info = archive.getinfo(name)
        if info.flag_bits & 0x1:
            raise DdimError(f"{name} in {path} is encrypted; ddim reads unencrypted zips only")
        if info.compress_type not in _ZIP_METHODS:
            raise DdimError(
                f"{name} in {path} is compressed with zip method {info.compress_type} "
                "(9 is Deflate64), which Python cannot read; zip it again with Deflate"
            )
        if info.file_size > MAX_MEMBER_BYTES:
            raise DdimError(
                f"{name} in {path} declares {info.file_size / 2**30:.1f} GiB uncompressed, more "
                f"than any image file under PIL's decompression-bomb limit "
                f"({MAX_MEMBER_BYTES / 2**30:.0f} GiB): refusing to inflate it"
            )
    return members


def _load_npz(path: Path, key: str | None) -> tuple[str, np.ndarray]:
    """Read one uint8 image array from an .npz (no pickles, headers checked first) and return
    (key, NHWC RGB array)."""
    keys = list(npz_headers(path))
    if key is None:
        key = "arr_0" if "arr_0" in keys or len(keys) != 1 else keys[0]
    return key, _rgb_array(load_npz_arrays(path, [key])[key], f"{path}[{key}]")


def _rgb_array(array: np.ndarray, name: str) -> np.ndarray:
    """Check a uint8 (N, H, W[, C]) array, make it (N, H, W, 3): gray replicated, alpha dropped."""
    if array.dtype != np.uint8 or array.ndim not in (3, 4):
        raise DdimError(f"{name} must be uint8 images (N, H, W, C), got {array.dtype} "
                        f"{tuple(array.shape)}")
    if array.ndim == 3:
        array = array[..., None]
    channels = array.shape[3]
    if channels not in (1, 3, 4):
        raise DdimError(f"{name} has {channels} channels; expected 1, 3 or 4 (NHWC)")
    if channels != 3:
        warnings.warn(f"converting {channels}-channel images in {name} to RGB", stacklevel=3)
    if channels == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=3))
    return np.ascontiguousarray(array[..., :3])


# --- CIFAR-10 python batches, read without trusting the pickles -------------------------------


def _find_cifar_folder(path: Path) -> Path | None:
    """The cifar-10-batches-py folder at or directly inside path, if there is one."""
    for folder in (path, path / CIFAR_FOLDER):
        if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
            return folder
    return None


def _open_cifar(
    folder: Path, subdir: str | None, options: dict, name: str | None = None
) -> ImageDataset:
    """Dataset of the CIFAR-10 train batches or the test batch (subdir=None: the one present)."""
    if subdir is not None and subdir not in CIFAR_SPLITS:
        raise DdimError(f"subdir for {folder} must be 'train' or 'test', got {subdir!r}")
    if subdir is None:
        present = [s for s, names in CIFAR_SPLITS.items() if (folder / names[0]).is_file()]
        if len(present) > 1:
            _refuse_mixed_splits(folder, None, present)
        subdir = present[0]
    names = CIFAR_SPLITS[subdir]
    files = [folder / name for name in names]
    for file in files:
        if not file.is_file():
            raise DdimError(f"missing CIFAR-10 batch file {file}")
    arrays = [read_cifar_batch(file) for file in files]
    parts = [(str(file), len(array)) for file, array in zip(files, arrays, strict=True)]
    options = dict(options, on_error="raise")  # decoded arrays: nothing can be unreadable
    return ImageDataset("cifar", folder, subdir=subdir, array=np.concatenate(arrays),
                        parts=parts, files=files, name=name, **options)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The one use of _codecs.encode that protocol-2 pickles of bytes need."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build only builtin containers, strings, numbers and numpy arrays."""

    def find_class(self, module: str, name: str):
        """Return the few globals numpy arrays need; refuse everything else (it could run code)."""
        reconstruct = np.zeros(1).__reduce__()[0]  # what numpy pickles ndarrays with
        frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # the same, for pickle protocol 5
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy.core.numeric", "_frombuffer"): frombuffer,
            ("numpy._core.numeric", "_frombuffer"): frombuffer,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return allowed[(module, name)]


def read_cifar_batch(file: Path) -> np.ndarray:
    """Read one CIFAR-10 python batch pickle safely; return its images as uint8 (N, 32, 32, 3)."""
    try:
        with open(file, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # anything a malformed or hostile pickle raises is the file's fault
        raise DdimError(f"cannot read CIFAR-10 batch {file}: {exc}") from exc
    data = batch.get("data", batch.get(b"data")) if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        raise DdimError(f"{file} is not a CIFAR-10 batch (no uint8 'data' array (N, 3072))")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


# --- a few files or items ---------------------------------------------------------------------


def load_image_files(paths: Sequence[str | Path], resolution: int) -> torch.Tensor:
    """Image files as uint8 RGB (N, 3, R, R): centre-cropped and resized like the datasets."""
    images = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DdimError(f"image not found: {path}")
        image = fit_image(decode_image(path, str(path)).convert("RGB"), resolution)
        images.append(torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy()))
    return torch.stack(images)


# How `spread_indices` picks n items (recorded with the outputs that depend on it).
SELECTION = "evenly spread: indices k*size//n"


def spread_indices(size: int, n: int | None) -> list[int]:
    """n indices evenly spread over range(size), ⌊k·size/n⌋ for k < n (all of them when n is None
    or ≥ size). Datasets stored class by class (CIFAR-10's class folders) keep every class in
    proportion, where the first n items would be one class."""
    if n is None or n >= size:
        return list(range(size))
    return [k * size // n for k in range(n)]


def take_images(dataset: ImageDataset, indices: Sequence[int]) -> torch.Tensor:
    """Items `indices` of a dataset as one uint8 tensor (N, C, H, W); bad indices are errors."""
    for i in indices:
        if not 0 <= i < len(dataset):
            raise DdimError(f"index {i} is out of range for {len(dataset)} images")
    return torch.stack([dataset[i] for i in indices])
