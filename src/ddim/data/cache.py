"""Decode a dataset once into one uint8 tensor, in parallel, cached on disk between runs.

The cache is optional: one that cannot be read is decoded again, and one that cannot be written
(a read-only folder, a full disk) is a one-line warning; the images are returned either way.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import safetensors
import torch
from safetensors.torch import save_file

from ddim.data.datasets import ImageDataset
from ddim.errors import DdimError
from ddim.files import atomic_write
from ddim.progress import progress_bar

DECODE_CHUNK = 256


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
    A cache that cannot be written is a warning, not an error.
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
    with progress_bar(total=len(dataset), desc=f"decoding {dataset.path.name}", unit="img",
              disable=not progress) as bar:
        for j, (images, error) in enumerate(loader):
            if images is None:
                raise DdimError(error)
            out[j * DECODE_CHUNK: j * DECODE_CHUNK + len(images)] = images
            bar.update(len(images))
    return out


def _read_cache(cache: Path, key: str) -> torch.Tensor | None:
    """The cached images if the file exists, can be read and was made for this key, else None."""
    try:
        if not cache.is_file():
            return None
        with safetensors.safe_open(str(cache), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return f.get_tensor("images")
    except (OSError, safetensors.SafetensorError):
        return None


def _write_cache(cache: Path, key: str, images: torch.Tensor) -> None:
    """Write the images and their key atomically; a failure is a one-line warning."""
    tensors = {"images": images.contiguous()}
    try:
        atomic_write(cache, lambda tmp: save_file(tensors, str(tmp), metadata={"key": key}))
    except (DdimError, OSError, safetensors.SafetensorError) as error:
        warnings.warn(f"decoded images not cached, going on without the cache: {error}",
                      stacklevel=3)
