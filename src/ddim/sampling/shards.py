"""Shard files: the images of a long run written as they are made, so that it can stop and resume.

Work is written as shards `parts/part-<first index>.npz` (uint8 NHWC with their indices), each
atomically. A rerun reads which indices the shards hold and makes only the missing ones, so an
interrupted run resumes where it stopped and a larger N grows the folder; a damaged shard is
removed (with a warning) and remade. Which settings a folder's shards were made with is the
caller's record (`ddim sample` keeps one, `ddim.files.outputs`). Under `torchrun`, rank r takes
batches r, r + W, r + 2W, …; rank 0 merges the shards at the end.

Image k is drawn from its own seed (`ddim.sampling.seeds`): bit for bit the same noise at any
batch size and on any number of GPUs. The network's arithmetic is not: oneDNN on the CPU (and
cuDNN on GPUs) picks kernels by batch shape, which sum in another order, so image k at two batch
sizes differs by float32 rounding, which moves a uint8 pixel by at most one level, and rarely.
The same batch size, device and thread count give bit-identical images. docs/reliability.md
states the promise and its measurements.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ddim.data import to_uint8
from ddim.diffusion.eps_model import EpsModel
from ddim.errors import DdimError
from ddim.files import atomic_write, load_npz_arrays
from ddim.sampling.runners import sample_seeds
from ddim.sampling.seeds import batches_of
from ddim.sampling.settings import Sampler


def generate_to_shards(
    eps_model: EpsModel,
    sampler: Sampler,
    seeds: Sequence[int],
    shape: Sequence[int],
    folder: str | Path,
    *,
    batch: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Make this rank's images that no shard in `folder/parts` holds; return how many it made.
    `progress(made, found)` is called after each batch with the images it made and those it
    found made by an earlier run (a bar counts the second apart: `ProgressBar.skip`)."""
    parts = Path(folder) / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    held = np.zeros(len(seeds), bool)
    for indices in shard_indices(parts).values():
        held[indices[indices < len(seeds)]] = True
    made = 0
    for first, batch_seeds in batches_of(seeds, batch, rank, world_size):
        todo = [k for k in range(first, first + len(batch_seeds)) if not held[k]]
        if todo:
            chosen = [seeds[k] for k in todo]
            images = to_uint8(sample_seeds(eps_model, sampler, chosen, shape, device))
            _save_shard(parts / f"part-{todo[0]:07d}.npz", todo, images)
            made += len(todo)
        if progress is not None:
            progress(len(todo), len(batch_seeds) - len(todo))
    return made


def _save_shard(path: Path, indices: Sequence[int], images: torch.Tensor) -> None:
    """One shard, atomically: uint8 NHWC images and their indices."""
    pixels = images.permute(0, 2, 3, 1).cpu().numpy()
    indices = np.asarray(indices, dtype=np.int64)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" to the name
            np.savez(f, images=pixels, indices=indices)

    atomic_write(path, write)


def _read_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NHWC images, int indices) of one shard, checked; a bad shard is a DdimError."""
    arrays = load_npz_arrays(path, ["images", "indices"])
    images, indices = arrays["images"], arrays["indices"]
    if (images.dtype != np.uint8 or images.ndim != 4 or indices.ndim != 1
            or indices.dtype.kind not in "iu" or len(images) != len(indices)
            or (len(indices) and indices.min() < 0)):
        raise DdimError(f"{str(path)!r} is not a shard of uint8 images and their indices")
    return images, indices.astype(np.int64)


def shard_indices(parts: str | Path) -> dict[Path, np.ndarray]:
    """The image indices each shard in `parts` holds; a damaged shard is removed, with a warning."""
    found = {}
    for path in sorted(Path(parts).glob("part-*.npz")):
        try:
            found[path] = _read_shard(path)[1]
        except DdimError as error:
            warnings.warn(f"removing a damaged shard (its images are made again): {error}",
                          stacklevel=2)
            path.unlink(missing_ok=True)
    return found


def read_shards(folder: str | Path, n: int) -> torch.Tensor:
    """Images 0 … n-1 from the shards in `folder/parts`, as uint8 (N, C, H, W)."""
    out, seen = None, np.zeros(n, bool)
    for path in sorted((Path(folder) / "parts").glob("part-*.npz")):
        images, indices = _read_shard(path)
        if out is None:
            out = np.empty((n, *images.shape[1:]), np.uint8)
        if images.shape[1:] != out.shape[1:]:
            raise DdimError(f"{str(path)!r} holds {images.shape[1:]} images, not {out.shape[1:]}")
        keep = indices < n
        out[indices[keep]] = images[keep]
        seen[indices[keep]] = True
    if out is None or not seen.all():
        missing = int((~seen).sum())
        raise DdimError(f"{missing} of {n} images are missing from {Path(folder) / 'parts'}")
    return torch.from_numpy(out).permute(0, 3, 1, 2)
