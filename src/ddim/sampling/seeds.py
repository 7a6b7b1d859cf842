"""Per-seed noise and batching: image k's x_T and every noise it receives come from a generator
seeded with its own seed, so it is the same in any batch and on any rank; work is cut into
batches of seeds (batch b to rank b mod W) or of consecutive images."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ddim.diffusion.samplers import generators_from_seeds, randn
from ddim.errors import DdimError


def seed_noise(seeds: Sequence[int], shape: Sequence[int], device) -> tuple[torch.Tensor, list]:
    """x_T for `seeds` (one generator per seed) and the generators, which hold each image's
    later noise."""
    generators = generators_from_seeds(seeds, device)
    return randn((len(seeds), *shape), generators, device=device), generators


def seed_latents(seeds: Sequence[int], shape: Sequence[int], device) -> torch.Tensor:
    """x_T of `seeds` exactly as `ddim sample` draws them."""
    return seed_noise(seeds, shape, device)[0]


def batches_of(seeds: Sequence[int], batch: int, rank: int = 0, world_size: int = 1):
    """(first index, seeds) of this rank's batches: batch b goes to rank b mod W."""
    starts = range(0, len(seeds), batch)
    return [(s, list(seeds[s : s + batch])) for i, s in enumerate(starts) if i % world_size == rank]


def slices(n: int, batch: int) -> Iterator[slice]:
    """Slices of `batch` consecutive items covering range(n)."""
    if batch < 1:
        raise DdimError(f"batch must be >= 1, got {batch}", argument="batch")
    return (slice(s, min(s + batch, n)) for s in range(0, n, batch))
