"""Shapes: a procedural image dataset that needs no download (ours, so no licence to note).

Each image is one coloured shape (disc, square, triangle or bar) of random size, position and
colour on a dark plain or two-tone background. Images are drawn at 4× the resolution and averaged
down (anti-aliased edges). Image k depends only on (seed, k): it is drawn from a NumPy PCG64
generator seeded with [seed, k], so the first n images of a seed are the same whatever n is.
"""

from __future__ import annotations

import colorsys

import numpy as np
import torch

from ddim.errors import DdimError

KINDS = ("disc", "square", "triangle", "bar")
SUPERSAMPLE = 4


def shapes(n: int, *, seed: int = 0, size: int = 16) -> torch.Tensor:
    """`n` shape images as uint8 (n, 3, size, size), image k a function of (seed, k) only."""
    if n < 0 or size < 4:
        raise DdimError(f"shapes needs n >= 0 and size >= 4, got n={n}, size={size}")
    out = np.empty((n, 3, size, size), np.uint8)
    for k in range(n):
        out[k] = _draw(np.random.default_rng([seed, k]), size)
    return torch.from_numpy(out)


def _draw(rng: np.random.Generator, size: int) -> np.ndarray:
    """One image (3, size, size) uint8: background, then the shape's mask in its colour."""
    hi = size * SUPERSAMPLE
    y, x = (np.mgrid[0:hi, 0:hi] + 0.5) / hi  # pixel centres in [0, 1]
    canvas = _background(rng, x, y)
    kind = KINDS[rng.integers(len(KINDS))]
    r = rng.uniform(0.15, 0.32)  # half-size as a fraction of the image
    cx, cy = rng.uniform(r, 1 - r, size=2)
    mask = _mask(kind, x - cx, y - cy, r, vertical=bool(rng.integers(2)))
    colour = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
    canvas = np.where(mask, np.asarray(colour)[:, None, None], canvas)
    small = canvas.reshape(3, size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(2, 4))
    return np.round(small * 255).astype(np.uint8)


def _background(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A dark plain background, or (half the time) two dark tones split by a random line."""
    tones = rng.uniform(0.0, 0.4, size=(2, 3))
    if rng.integers(2) == 0:
        return np.broadcast_to(tones[0][:, None, None], (3, *x.shape)).copy()
    angle, offset = rng.uniform(0, np.pi), rng.uniform(-0.2, 0.2)
    side = (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle) > offset
    return np.where(side, tones[0][:, None, None], tones[1][:, None, None])


def _mask(kind: str, dx: np.ndarray, dy: np.ndarray, r: float, vertical: bool) -> np.ndarray:
    """Boolean mask of a shape of half-size r centred at dx = dy = 0."""
    if kind == "disc":
        return dx**2 + dy**2 <= r**2
    if kind == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if kind == "triangle":  # apex up, base at dy = r, base width 2r
        return (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    if kind == "bar":
        long, short = (dy, dx) if vertical else (dx, dy)
        return (np.abs(long) <= r) & (np.abs(short) <= r / 2.5)
    raise DdimError(f"unknown shape {kind!r}; choose from {', '.join(KINDS)}")
