"""Image datasets as uint8 tensors, and the one conversion between uint8 and the model's [-1, 1].

Sources (`open_dataset` tells them apart): the CIFAR-10 python batches folder, a folder of images, a
zip of images read in place, and an ``.npz`` of uint8 NHWC images (how generated samples are
stored). Every item is a uint8 RGB tensor (3, R, R); training and FID read the same `ImageDataset`.
For training, `load_all` decodes a dataset once (in parallel, optionally cached on disk) and
`infinite_batches` serves reproducible, resumable, DDP-sharded [-1, 1] batches from a uint8 tensor
that may live on the GPU.
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import safetensors
import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from ddim.errors import DdimError

Crop = Literal["center", "stretch"]
OnError = Literal["raise", "skip"]
Kind = Literal["cifar", "folder", "zip", "npz"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_SPLITS = {"train": tuple(f"data_batch_{k}" for k in range(1, 6)), "test": ("test_batch",)}
CACHE_VERSION = 1
DECODE_CHUNK = 256

# What a broken image file can raise while being read and decoded (PIL, zip member CRC, deflate).
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, zipfile.BadZipFile, zlib.error,
    Image.DecompressionBombError,
)


# --- uint8 <-> model range -------------------------------------------------------------------


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """Map uint8 images {0..255} to float32 in [-1, 1] as x / 127.5 - 1, on the input's device."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_model_range expects uint8 images, got {images.dtype}")
    return images.to(torch.float32) / 127.5 - 1.0


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
    ):
        self.kind, self.path, self.subdir = kind, path, subdir
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
        """The path (and sub-folder or key) this dataset reads, for messages."""
        return str(self.path) if self.subdir is None else f"{self.path} [{self.subdir}]"

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
        handle = self._zipfile() if self.kind == "zip" else None
        try:
            stream = io.BytesIO(handle.read(member)) if handle is not None else self.path / member
            with Image.open(stream) as image:
                image.load()
                return self._rgb(image)
        except _DECODE_ERRORS as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DdimError(f"cannot read image {self.item_name(i)}: {message}") from exc

    def _rgb(self, image: Image.Image) -> Image.Image:
        """Convert to RGB, warning the first time each other mode is seen."""
        if image.mode == "RGB":
            return image.copy()
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
                "resize every image to NxN"
            )
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
                "center-crop and resize every image to NxN"
            )
        return width

    def _drop_unreadable(self, progress: bool) -> None:
        """Decode every file once and drop the unreadable ones, counting them in `skipped`."""
        keep, first_error = [], None
        for i in tqdm(range(len(self._members)), desc=f"checking {self.path.name}", unit="img",
                      disable=not progress or self._array is not None):
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
) -> ImageDataset:
    """Open images from a cifar-10-batches-py folder, an image folder, a zip or an .npz file.

    subdir picks a part: "train"/"test" of CIFAR-10 (None = train then test), a sub-folder of a
    folder or zip (None = all of it, recursively, sorted by path), or the array key of an .npz
    (None = "arr_0" or its only array). on_error="skip" decodes every file once up front and
    drops unreadable ones (count in `.skipped`, with a warning); "raise" fails on the first one.
    """
    _check_options(resolution, crop, on_error)
    path = Path(path)
    options = dict(resolution=resolution, crop=crop, on_error=on_error, progress=progress)
    if not path.exists():
        raise DdimError(f"dataset not found: {path}")
    if path.is_dir():
        cifar = _find_cifar_folder(path)
        if cifar is not None:
            return _open_cifar(cifar, subdir, options)
        root = path if subdir is None else path / subdir
        if not root.is_dir():
            raise DdimError(f"no folder {subdir!r} in {path}")
        return ImageDataset("folder", root, members=_folder_members(root), **options)
    suffix = path.suffix.lower()
    if suffix == ".zip":
        archive = _open_zip(path)
        members = _zip_members(archive, path, subdir)
        return ImageDataset("zip", path, subdir=subdir, members=members, files=[path],
                            archive=archive, **options)
    if suffix == ".npz":
        key, array = _load_npz(path, subdir)
        parts = [(str(path), len(array))]
        return ImageDataset("npz", path, subdir=key, array=array, parts=parts, files=[path],
                            **options)
    raise DdimError(f"{path} is not a folder, .zip or .npz of images nor a {CIFAR_FOLDER} folder")


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


def _zip_members(archive: zipfile.ZipFile, path: Path, subdir: str | None) -> tuple[str, ...]:
    """Image members of the zip at path (under subdir/ if given), sorted."""
    names = archive.namelist()
    prefix = "" if subdir is None else subdir.strip("/") + "/"
    if prefix and not any(name.startswith(prefix) for name in names):
        raise DdimError(f"no folder {subdir!r} in {path}")
    return tuple(sorted(n for n in names if n.startswith(prefix) and _is_image_name(n)))


def _load_npz(path: Path, key: str | None) -> tuple[str, np.ndarray]:
    """Read one uint8 image array from an .npz (no pickles) and return (key, NHWC RGB array)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            if key is None:
                key = "arr_0" if "arr_0" in keys or len(keys) != 1 else keys[0]
            if key not in keys:
                raise DdimError(f"{path} has no array {key!r} (it has {', '.join(keys) or 'none'})")
            array = npz[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DdimError):
            raise
        raise DdimError(f"cannot read {path} as an .npz of images ({exc})") from exc
    return key, _rgb_array(array, f"{path}[{key}]")


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


def _open_cifar(folder: Path, subdir: str | None, options: dict) -> ImageDataset:
    """Dataset of the CIFAR-10 train batches, the test batch, or both (subdir=None)."""
    if subdir is not None and subdir not in CIFAR_SPLITS:
        raise DdimError(f"subdir for {folder} must be 'train' or 'test', got {subdir!r}")
    names = CIFAR_SPLITS[subdir] if subdir else CIFAR_SPLITS["train"] + CIFAR_SPLITS["test"]
    files = [folder / name for name in names]
    for file in files:
        if not file.is_file():
            raise DdimError(f"missing CIFAR-10 batch file {file}")
    arrays = [read_cifar_batch(file) for file in files]
    parts = [(str(file), len(array)) for file, array in zip(files, arrays, strict=True)]
    options = dict(options, on_error="raise")  # decoded arrays: nothing can be unreadable
    return ImageDataset("cifar", folder, subdir=subdir, array=np.concatenate(arrays),
                        parts=parts, files=files, **options)


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


# --- decode everything once -------------------------------------------------------------------


class _Chunks(torch.utils.data.Dataset):
    """Consecutive chunks of a dataset, each decoded to (uint8 tensor, "") or (None, error)."""

    def __init__(self, dataset: ImageDataset, size: int):
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        """Number of chunks."""
        return -(-len(self.dataset) // self.size)

    def __getitem__(self, j: int) -> tuple[torch.Tensor | None, str]:
        """Chunk j, or the message of its first bad image (kept one line across processes)."""
        stop = min(len(self.dataset), (j + 1) * self.size)
        try:
            return torch.stack([self.dataset[i] for i in range(j * self.size, stop)]), ""
        except DdimError as exc:
            return None, str(exc)


def load_all(
    dataset: ImageDataset,
    *,
    workers: int = 0,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> torch.Tensor:
    """Decode every item once into one uint8 CPU tensor (N, 3, R, R), in order.

    workers > 0 decodes in that many DataLoader worker processes. With cache_dir, the result is
    stored there as <name>-<key hash>.safetensors (tensor "images", metadata "key" =
    `dataset.fingerprint()`) and read back instead of decoding while the files and options match
    (arrays that need no decoding, like CIFAR batches at 32x32, are returned without a cache).
    """
    if workers < 0:
        raise DdimError(f"workers must be >= 0, got {workers}")
    if cache_dir is None or dataset.as_array() is not None:  # nothing to decode: no cache
        return _decode_all(dataset, workers, progress)
    key = dataset.fingerprint()
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"{dataset.path.stem}-{digest}.safetensors"
    images = _read_cache(cache, key)
    if images is None:
        images = _decode_all(dataset, workers, progress)
        _write_cache(cache, key, images)
    return images


def _decode_all(dataset: ImageDataset, workers: int, progress: bool) -> torch.Tensor:
    """Decode all items in order, chunk by chunk, with a progress bar."""
    ready = dataset.as_array()
    if ready is not None:
        return ready
    r = dataset.resolution
    out = torch.empty((len(dataset), 3, r, r), dtype=torch.uint8)
    chunks = _Chunks(dataset, DECODE_CHUNK)
    loader = torch.utils.data.DataLoader(chunks, batch_size=None, num_workers=workers)
    with tqdm(total=len(dataset), desc=f"decoding {dataset.path.name}", unit="img",
              disable=not progress) as bar:
        for j, (images, error) in enumerate(loader):
            if images is None:
                raise DdimError(error)
            out[j * DECODE_CHUNK: j * DECODE_CHUNK + len(images)] = images
            bar.update(len(images))
    return out


def _read_cache(cache: Path, key: str) -> torch.Tensor | None:
    """The cached images if the file exists and was made for this key, else None."""
    if not cache.is_file():
        return None
    try:
        with safetensors.safe_open(str(cache), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return f.get_tensor("images")
    except (OSError, safetensors.SafetensorError):
        return None


def _write_cache(cache: Path, key: str, images: torch.Tensor) -> None:
    """Write the images and their key atomically (temporary file, then rename)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")
    save_file({"images": images.contiguous()}, str(partial), metadata={"key": key})
    os.replace(partial, cache)


# --- endless training batches -----------------------------------------------------------------


def epoch_order(num_items: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return one epoch's (permutation, flip mask) from a CPU generator seeded by (seed, epoch).

    The generator is always on the CPU so the order is the same on every device and machine.
    """
    digest = hashlib.sha256(f"ddim.data:{seed}:{epoch}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    order = torch.randperm(num_items, generator=generator)
    flips = torch.randint(0, 2, (num_items,), generator=generator, dtype=torch.bool)
    return order, flips


class _Stream:
    """The endless concatenation of epoch orders, with the current epoch's copy on the device."""

    def __init__(self, num_items: int, seed: int, device: torch.device):
        self.num_items, self.seed, self.device = num_items, seed, device
        self.epoch, self.order, self.flips = -1, None, None

    def take(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item indices and flip bits at stream positions [start, start + count)."""
        orders, flips = [], []
        while count > 0:
            epoch, offset = divmod(start, self.num_items)
            self._load(epoch)
            n = min(count, self.num_items - offset)
            orders.append(self.order[offset: offset + n])
            flips.append(self.flips[offset: offset + n])
            start, count = start + n, count - n
        return torch.cat(orders), torch.cat(flips)

    def _load(self, epoch: int) -> None:
        """Make epoch's order current, copied to the device without blocking the host."""
        if epoch == self.epoch:
            return
        order, flips = epoch_order(self.num_items, self.seed, epoch)
        if self.device.type == "cuda":
            order, flips = order.pin_memory(), flips.pin_memory()
        self.order = order.to(self.device, non_blocking=True)
        self.flips = flips.to(self.device, non_blocking=True)
        self.epoch = epoch


def infinite_batches(
    images: torch.Tensor,
    batch_size: int,
    *,
    seed: int,
    random_flip: bool = True,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
) -> Iterator[torch.Tensor]:
    """Yield this rank's float [-1, 1] batches (batch_size, C, H, W) forever, on images' device.

    The data stream is epoch 0's permutation, then epoch 1's, ... (`epoch_order`), read without
    gaps across epoch ends. Step s's global batch is stream positions [s·G, (s+1)·G) with
    G = batch_size·world_size, and rank r takes positions [s·G + r·B, s·G + (r+1)·B): the ranks'
    shards concatenated are exactly the one-process batch of size G. start_step=N jumps straight
    to step N. Each item is mirrored left-right when its epoch's flip bit is set (random_flip).
    """
    _check_batch_args(images, batch_size, rank, world_size, start_step)
    stream = _Stream(len(images), seed, images.device)
    step = start_step
    while True:
        index, flip = stream.take((step * world_size + rank) * batch_size, batch_size)
        batch = images[index]
        if random_flip:
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
        yield to_model_range(batch)
        step += 1


def _check_batch_args(images: torch.Tensor, batch_size: int, rank: int, world_size: int,
                      start_step: int) -> None:
    """Reject bad arguments to infinite_batches with a DdimError naming the value."""
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) == 0:
        raise DdimError(f"images must be a non-empty uint8 (N, C, H, W) tensor, got "
                        f"{images.dtype} {tuple(images.shape)}")
    if batch_size < 1:
        raise DdimError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise DdimError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if start_step < 0:
        raise DdimError(f"start_step must be >= 0, got {start_step}")
