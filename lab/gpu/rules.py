"""The decisions of the GPU harness (lab/gpu/run.py), as rules on measured numbers: the network
width, the training batch, whether torch.compile pays, how long to train, and how many sample sets
fit in what the run hands back. Pure functions of their arguments (no torch), each tested alone.

Width. Only the width of the shipped model (64) can start from its weights; a wider network
starts from scratch. A width is eligible when its float16 weights fit the bundled file's limit
(20 MB) and its measured images/s reach the target number of images in the training time; the
widest eligible width is chosen, and when none is eligible, the eligible-by-size width that sees
the most images. At 32×32 the ch 96 network has 20.1M parameters, 40 MB in float16: over the
limit, so today the rule always keeps ch 64, which also keeps the warm start.

Batch. The smallest measured batch within 10 % of the best images/s: past that point a larger
batch buys little speed and takes fewer optimiser steps from the same images. The learning rate
scales with √(batch / 512) from the config's rate at 512, and the warm-up keeps its images.

Compile. Compiling pays when (T − c) · r_compiled > T · r_eager for a training time T, the
compilation's measured seconds c and the two measured rates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

MIB = 2**20
MAX_BUNDLE_BYTES = 20_000_000  # the bundled float16 weights stay under 20 MB
CONFIG_BATCH = 512  # the batch cifar10-gpu's learning rate and warm-up are set for
BATCH_TOLERANCE = 0.9  # a batch is as fast as the best when within 10 % of its images/s

# This lab's harness limits: the lent machine hands back at most 8 files of at most 16 MiB each,
# 64 MiB together.
MAX_FILES = 8
MAX_TOTAL_BYTES = 64 * MIB
PART_BYTES = int(15.5 * MIB)  # each file at most this long, under 16 MiB with room to spare


def fp16_bytes(parameters: int) -> int:
    """Bytes of a network's weights stored as float16."""
    return 2 * parameters


def choose_width(
    rates: Mapping[int, float],
    parameters: Mapping[int, int],
    seconds: float,
    *,
    target_images: float,
    max_bytes: int = MAX_BUNDLE_BYTES,
) -> tuple[int, str]:
    """(width, reason): the widest width that fits `max_bytes` in float16 and reaches
    `target_images` at its measured images/s in `seconds`; else the fitting width that sees the
    most images; else (nothing fits) the smallest width."""
    if not rates:
        raise ValueError("no width was measured")
    fits = [w for w in rates if fp16_bytes(parameters[w]) <= max_bytes]
    notes = [_width_note(w, rates[w], parameters[w], seconds, max_bytes) for w in sorted(rates)]
    reach = [w for w in fits if rates[w] * seconds >= target_images]
    if reach:
        width = max(reach)
        why = f"widest that fits and reaches {target_images:,.0f} images"
    elif fits:
        width = max(fits, key=lambda w: rates[w])
        why = f"none reaches {target_images:,.0f} images; the fitting one that sees the most"
    else:
        width = min(rates)
        why = "none fits; the smallest"
    return width, f"ch {width}: {why} ({'; '.join(notes)})"


def _width_note(width: int, rate: float, parameters: int, seconds: float, max_bytes: int) -> str:
    """One width's figures as text."""
    size = fp16_bytes(parameters)
    fit = "fits" if size <= max_bytes else f"over {max_bytes / 1e6:.0f} MB"
    return (f"ch {width}: {rate:,.0f} img/s, {rate * seconds / 1e6:.2f}M images in "
            f"{seconds:.0f} s, {size / 1e6:.1f} MB fp16 ({fit})")


def choose_batch(rates: Mapping[int, float], tolerance: float = BATCH_TOLERANCE) -> tuple[int, str]:
    """(batch, reason): the smallest batch whose images/s is within `tolerance` of the best."""
    if not rates:
        raise ValueError("no batch was measured")
    best = max(rates.values())
    batch = min(b for b, r in rates.items() if r >= tolerance * best)
    table = ", ".join(f"{b}: {rates[b]:,.0f} img/s" for b in sorted(rates))
    within = f"{100 * (1 - tolerance):.0f} %"
    return batch, f"batch {batch}: the smallest within {within} of the best ({table})"


def batch_overrides(batch: int, lr: float, warmup: int, base: int = CONFIG_BATCH) -> dict:
    """Learning rate and warm-up for `batch` from the config's values at `base`: the rate scaled
    by √(batch / base), the warm-up's images kept."""
    return {
        "training.lr": lr * math.sqrt(batch / base),
        "training.warmup": max(1, round(warmup * base / batch)) if warmup else 0,
    }


def compile_pays(eager: float, compiled: float, compile_seconds: float, seconds: float) -> bool:
    """Whether training `seconds` compiled (after `compile_seconds` of compilation) sees more
    images than training them eagerly."""
    return (seconds - compile_seconds) * compiled > seconds * eager


def training_seconds(remaining: float, after: float, startup: float, least: float) -> float:
    """Seconds of training that leave `after` seconds for what follows it, once `startup`
    seconds of the training process's start are taken off what `remaining` allows; at least
    `least`."""
    return max(least, remaining - after - startup)


def parts_of(size: int, part_bytes: int = PART_BYTES) -> int:
    """How many files of at most `part_bytes` a file of `size` bytes is split into."""
    return max(1, -(-size // part_bytes))


def sets_that_fit(
    used_files: int,
    used_bytes: int,
    set_bytes: int,
    *,
    reserve_files: int = 2,
    reserve_bytes: int = 4 * MIB,
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_TOTAL_BYTES,
    part_bytes: int = PART_BYTES,
) -> int:
    """How many more files of `set_bytes` (each split into parts) fit beside `used_files` files
    of `used_bytes`, keeping `reserve_files` files and `reserve_bytes` bytes for the records and
    the manifest."""
    files_left = max_files - reserve_files - used_files
    bytes_left = max_bytes - reserve_bytes - used_bytes
    if files_left <= 0 or bytes_left <= 0:
        return 0
    return max(0, min(files_left // parts_of(set_bytes, part_bytes), bytes_left // set_bytes))
