"""Shard files: the results of a long run written as they are made, so that it can stop and resume.

Work is written as shards `part-<first index>.npz` in a folder of parts, each atomically: uint8
NHWC images (`ddim sample`, `generate_to_shards`, in `OUT/parts`) or float32 NCHW latents (`ddim
encode`, `encode_to_shards`), with their indices. A rerun reads which indices the shards hold and
makes only the missing ones, so an interrupted run resumes where it stopped and a larger N grows
the folder; a damaged shard is removed (with a warning) and remade. Which settings the shards were
made with is the caller's record (`ddim.files.outputs`). Under `torchrun`, rank r takes batches
r, r + W, r + 2W, …; rank 0 merges the shards at the end.

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

from ddim.data import to_model_range, to_uint8
from ddim.diffusion.eps_model import EpsModel
from ddim.errors import DdimError
from ddim.files import atomic_write, load_npz_arrays
from ddim.sampling.runners import encoder, sample_seeds
from ddim.sampling.seeds import batches_of, slices
from ddim.sampling.settings import Sampler

# What a shard holds beside its indices: the array's name, its dtype, and what it is.
KINDS = {"images": (np.uint8, "uint8 NHWC images"), "latents": (np.float32, "float32 latents")}


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
    held = _held(parts, len(seeds), "images")
    made = 0
    for first, batch_seeds in batches_of(seeds, batch, rank, world_size):
        todo = [k for k in range(first, first + len(batch_seeds)) if not held[k]]
        if todo:
            chosen = [seeds[k] for k in todo]
            images = to_uint8(sample_seeds(eps_model, sampler, chosen, shape, device))
            _save_shard(parts / f"part-{todo[0]:07d}.npz", todo, "images",
                        images.permute(0, 2, 3, 1).cpu().numpy())  # fmt: skip
            made += len(todo)
        if progress is not None:
            progress(len(todo), len(batch_seeds) - len(todo))
    return made


def encode_to_shards(
    eps_model: EpsModel,
    sampler: Sampler,
    images: torch.Tensor,
    parts: str | Path,
    *,
    batch: int,
    device: torch.device | str,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Encode the uint8 images (N, C, H, W) that no shard in the folder `parts` holds to their
    x_T (the deterministic sampler's ODE run upward, eqs. 13/14), a shard per batch; return how
    many it encoded. `progress(made, found)` as for `generate_to_shards`."""
    parts = Path(parts)
    held = _held(parts, len(images), "latents")
    encode = encoder(eps_model, sampler)
    made = 0
    for part in slices(len(images), batch):
        todo = [k for k in range(part.start, part.stop) if not held[k]]
        if todo:
            latents = encode(to_model_range(images[todo].to(device))).cpu()
            _save_shard(parts / f"part-{todo[0]:07d}.npz", todo, "latents",
                        latents.numpy().astype(np.float32))  # fmt: skip
            made += len(todo)
        if progress is not None:
            progress(len(todo), part.stop - part.start - len(todo))
    return made


def _held(parts: Path, n: int, kind: str) -> np.ndarray:
    """Which of indices 0 … n-1 the shards in `parts` hold (made if missing)."""
    parts.mkdir(parents=True, exist_ok=True)
    held = np.zeros(n, bool)
    for indices in shard_indices(parts, kind).values():
        held[indices[indices < n]] = True
    return held


def _save_shard(path: Path, indices: Sequence[int], kind: str, array: np.ndarray) -> None:
    """One shard, atomically: the array of `kind` (KINDS) and its indices."""
    indices = np.asarray(indices, dtype=np.int64)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" to the name
            np.savez(f, **{kind: array}, indices=indices)

    atomic_write(path, write)


def _read_shard(path: Path, kind: str = "images") -> tuple[np.ndarray, np.ndarray]:
    """(the array of `kind`, int indices) of one shard, checked; a bad shard is a DdimError."""
    dtype, what = KINDS[kind]
    arrays = load_npz_arrays(path, [kind, "indices"])
    array, indices = arrays[kind], arrays["indices"]
    if (array.dtype != dtype or array.ndim != 4 or indices.ndim != 1
            or indices.dtype.kind not in "iu" or len(array) != len(indices)
            or (len(indices) and indices.min() < 0)):
        raise DdimError(f"{str(path)!r} is not a shard of {what} and their indices")
    return array, indices.astype(np.int64)


def shard_indices(parts: str | Path, kind: str = "images") -> dict[Path, np.ndarray]:
    """The indices each shard in `parts` holds; a damaged shard is removed, with a warning."""
    found = {}
    for path in sorted(Path(parts).glob("part-*.npz")):
        try:
            found[path] = _read_shard(path, kind)[1]
        except DdimError as error:
            warnings.warn(f"removing a damaged shard (its work is done again): {error}",
                          stacklevel=2)
            path.unlink(missing_ok=True)
    return found


def read_shards(folder: str | Path, n: int) -> torch.Tensor:
    """Images 0 … n-1 from the shards in `folder/parts`, as uint8 (N, C, H, W)."""
    return torch.from_numpy(_gather(Path(folder) / "parts", n, "images")).permute(0, 3, 1, 2)


def read_latent_shards(parts: str | Path, n: int) -> torch.Tensor:
    """Latents 0 … n-1 from the shards in the folder `parts`, as float32 (N, C, H, W)."""
    return torch.from_numpy(_gather(Path(parts), n, "latents"))


def _gather(parts: Path, n: int, kind: str) -> np.ndarray:
    """Items 0 … n-1 of `kind` from the shards in `parts`; any missing is a DdimError."""
    out, seen = None, np.zeros(n, bool)
    for path in sorted(parts.glob("part-*.npz")):
        array, indices = _read_shard(path, kind)
        if out is None:
            out = np.empty((n, *array.shape[1:]), array.dtype)
        if array.shape[1:] != out.shape[1:]:
            raise DdimError(f"{str(path)!r} holds {array.shape[1:]} {kind}, not {out.shape[1:]}")
        keep = indices < n
        out[indices[keep]] = array[keep]
        seen[indices[keep]] = True
    if out is None or not seen.all():
        missing = int((~seen).sum())
        raise DdimError(f"{missing} of {n} {kind} are missing from {parts}")
    return out
