"""Generating many images from a checkpoint: per-image seeds, batches, ranks, resumable shards.

Image k is drawn from its own seed (`seeds[k]`): its x_T and every noise it receives come from a
generator seeded with it, so image k is the same at any batch size and on any number of GPUs.
Work is written as shards `parts/part-<first index>.npz` (uint8 NHWC with their indices), each
atomically; a rerun skips finished shards, so an interrupted run resumes where it stopped. Under
`torchrun`, rank r takes batches r, r + W, r + 2W, …; rank 0 merges the shards at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddim.data import to_uint8
from ddim.diffusion.eps_model import EpsModel
from ddim.diffusion.samplers import generators_from_seeds, randn, sample, sample_ddpm
from ddim.diffusion.schedule import timesteps
from ddim.errors import DdimError
from ddim.files import atomic_write


@dataclass(frozen=True)
class SamplerSpec:
    """Which sampler, on which sub-sequence: everything that decides the images besides x_T."""

    steps: int = 50
    skip: str = "uniform"
    eta: float = 0.0
    kind: str = "ddim"  # "ddim" (eq. 12) or "ddpm" (ancestral)
    variance: str = "small"  # DDPM only: "small" (β̃) or "large" (β, the paper's σ̂)
    clip_x0: bool | None = None  # default: off for DDIM, on for DDPM (the official code)

    def network_calls(self, num_timesteps: int) -> int:
        """How many times the network runs per image."""
        return len(timesteps(num_timesteps, self.steps, self.skip))


def sample_batch(
    eps_model: EpsModel,
    betas: torch.Tensor,
    spec: SamplerSpec,
    seeds: Sequence[int],
    shape: Sequence[int],
    device: torch.device,
    callback=None,
) -> torch.Tensor:
    """Images (float, [−1, 1]) for `seeds`, one per seed, whatever the batch they share."""
    generators = generators_from_seeds(seeds, device)
    x_T = randn((len(seeds), *shape), generators, device=device)
    if spec.kind == "ddim":
        clip = bool(spec.clip_x0)
        return sample(
            eps_model,
            x_T,
            betas,
            steps=spec.steps,
            skip=spec.skip,
            eta=spec.eta,
            generator=generators,
            clip_x0=clip,
            callback=callback,
        )
    if spec.kind == "ddpm":
        clip = True if spec.clip_x0 is None else spec.clip_x0
        return sample_ddpm(
            eps_model,
            x_T,
            betas,
            steps=spec.steps,
            skip=spec.skip,
            variance=spec.variance,
            generator=generators,
            clip_x0=clip,
            callback=callback,
        )
    raise DdimError(f"unknown sampler {spec.kind!r}; choose ddim or ddpm")


def batches_of(seeds: Sequence[int], batch: int, rank: int = 0, world_size: int = 1):
    """(first index, seeds) of this rank's batches: batch b goes to rank b mod W."""
    starts = range(0, len(seeds), batch)
    return [(s, list(seeds[s : s + batch])) for i, s in enumerate(starts) if i % world_size == rank]


def generate_to_shards(
    eps_model: EpsModel,
    betas: torch.Tensor,
    spec: SamplerSpec,
    seeds: Sequence[int],
    shape: Sequence[int],
    folder: str | Path,
    *,
    batch: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write this rank's missing shards to `folder/parts`; return how many images it made."""
    parts = Path(folder) / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    made = 0
    for first, batch_seeds in batches_of(seeds, batch, rank, world_size):
        path = parts / f"part-{first:07d}.npz"
        if not path.exists():
            images = to_uint8(sample_batch(eps_model, betas, spec, batch_seeds, shape, device))
            _save_shard(path, first, images)
            made += len(batch_seeds)
        if progress is not None:
            progress(len(batch_seeds))
    return made


def _save_shard(path: Path, first: int, images: torch.Tensor) -> None:
    """One shard, atomically: uint8 NHWC images and their indices."""
    pixels = images.permute(0, 2, 3, 1).cpu().numpy()
    indices = np.arange(first, first + len(images))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" to the name
            np.savez(f, images=pixels, indices=indices)

    atomic_write(path, write)


def read_shards(folder: str | Path, n: int) -> torch.Tensor:
    """All n images from the shards in `folder/parts`, in index order, as uint8 (N, C, H, W)."""
    out = None
    seen = np.zeros(n, bool)
    for path in sorted((Path(folder) / "parts").glob("part-*.npz")):
        with np.load(path) as shard:
            images, indices = shard["images"], shard["indices"]
        if out is None:
            out = np.empty((n, *images.shape[1:]), np.uint8)
        keep = indices < n
        out[indices[keep]] = images[keep]
        seen[indices[keep]] = True
    if out is None or not seen.all():
        missing = int((~seen).sum())
        raise DdimError(f"{missing} of {n} images are missing from {Path(folder) / 'parts'}")
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def iterate_images(
    eps_model: EpsModel,
    betas: torch.Tensor,
    spec: SamplerSpec,
    seeds: Sequence[int],
    shape: Sequence[int],
    *,
    batch: int,
    device: torch.device,
) -> Iterator[torch.Tensor]:
    """uint8 batches for `seeds`, in order, kept in memory (for scoring without files)."""
    for _, batch_seeds in batches_of(seeds, batch):
        yield to_uint8(sample_batch(eps_model, betas, spec, batch_seeds, shape, device))
