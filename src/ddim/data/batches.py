"""Endless training batches from a uint8 tensor: reproducible, resumable at any step, DDP-sharded.

The data order is a function of (seed, epoch) alone, drawn on the CPU, so it is the same on every
device and machine, and a run resumed at step N continues exactly where it stopped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from ddim.data.pixels import to_model_range
from ddim.errors import DdimError


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
