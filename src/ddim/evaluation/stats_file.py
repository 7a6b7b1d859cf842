"""Feature statistics of an image set and the `.npz` file that holds them: made from features or
images, saved, loaded, validated, and checked against this network, convention and image size.

A stats file keeps mu and sigma (the mean and covariance of the features), and beside them a
random 10,000 of the features (float32, 80 MB) for KID; files made before KID hold none, and still
give FID.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddim.errors import DdimError
from ddim.evaluation import distances, inception
from ddim.evaluation.inception import CONVENTION, Images
from ddim.files import atomic_write, load_npz_arrays

KID_FEATURES = 10_000  # reference features a stats file keeps for KID


@dataclass(frozen=True)
class FidStats:
    """Feature mean and covariance of an image set, with the network and convention behind them
    and the side of its (square) images, when known; `features`, float32 rows of the set's
    features for KID (a random subset, see `stats_from_features`), or None."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    network_sha256: str
    convention: str
    source: str
    resolution: int | None = None
    features: np.ndarray | None = None


# --- made --------------------------------------------------------------------------------------


def stats_from_features(
    features: np.ndarray,
    *,
    source: str,
    resolution: int | None = None,
    keep_features: int | None = KID_FEATURES,
    seed: int = 0,
) -> FidStats:
    """FidStats of Inception features (N, D): mean, covariance, and for KID `keep_features`
    rows drawn at random without replacement (seeded, in their original order; None: all, 0:
    none) as float32, which holds Inception's float32 outputs exactly."""
    mu, sigma = distances.statistics(features)
    n, kept = len(features), None
    if keep_features != 0:
        rows = np.arange(n)
        if keep_features is not None and keep_features < n:
            rows = np.sort(np.random.default_rng(seed).choice(n, keep_features, replace=False))
        kept = np.asarray(features)[rows].astype(np.float32)
    return FidStats(mu, sigma, n, inception.network_sha256(), CONVENTION, source, resolution, kept)


def stats_from_images(
    images: Images,
    *,
    source: str,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    total: int | None = None,
    workers: int = 0,
    progress: bool = True,
    resolution: int | None = None,
    keep_features: int | None = KID_FEATURES,
) -> FidStats:
    """Inception feature statistics of uint8 images, tagged with network hash and convention
    (and `resolution`, the images' side, which `check_resolution` compares), keeping
    `keep_features` of the features for KID (`stats_from_features`)."""
    features = inception.inception_features(
        images, device=device, batch_size=batch_size, total=total, workers=workers,
        progress=progress,
    )
    return stats_from_features(features, source=source, resolution=resolution,
                               keep_features=keep_features)


# --- saved and loaded --------------------------------------------------------------------------


def save_stats(stats: FidStats, path: str | os.PathLike) -> Path:
    """Write stats to an .npz (mu, sigma, n, network_sha256, convention, source, and resolution and
    float32 features when known); atomic replace."""
    extra = {} if stats.resolution is None else {"resolution": np.int64(stats.resolution)}
    if stats.features is not None:
        extra["features"] = np.asarray(stats.features, dtype=np.float32)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(
                f, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n),
                network_sha256=np.str_(stats.network_sha256), convention=np.str_(stats.convention),
                source=np.str_(stats.source), **extra,
            )

    return atomic_write(path, write)


def load_stats(path: str | os.PathLike, *, check: bool = True) -> FidStats:
    """Read an .npz stats file, validated (`validate_stats`); with `check`, refuse one made by
    another network or convention."""
    if not Path(path).is_file():
        raise DdimError(f"FID stats not found: {path}")
    fields = load_npz_arrays(path)
    if "mu" not in fields or "sigma" not in fields:
        raise DdimError(f"{path} is not a FID stats file (needs arrays 'mu' and 'sigma')")
    source = str(fields.get("source", "unknown"))
    try:
        stats = FidStats(
            mu=fields["mu"].astype(np.float64),
            sigma=fields["sigma"].astype(np.float64),
            n=int(fields.get("n", -1)),
            network_sha256=str(fields.get("network_sha256", "unknown")),
            convention=str(fields.get("convention", "unknown")),
            source=source,
            resolution=int(fields["resolution"]) if "resolution" in fields else (
                _resolution_in(source)),
            features=fields.get("features"),
        )
    except (TypeError, ValueError) as error:
        raise DdimError(f"{path} has a field of the wrong kind: {error}") from None
    validate_stats(stats, str(path))
    if check:
        check_compatible(stats, str(path))
    return stats


def _resolution_in(source: str) -> int | None:
    """The image side in a source description written by `ddim fid ref` ("…, 3x32x32 uint8")."""
    match = re.search(r"\b\d+x(\d+)x(\d+) uint8", source)
    return int(match[1]) if match and match[1] == match[2] else None


# --- validated and checked ---------------------------------------------------------------------


def validate_stats(stats: FidStats, name: str = "FID stats") -> None:
    """Raise a DdimError unless mu is (D,), sigma (D, D), both finite, sigma symmetric and
    positive semi-definite (to round-off), and n, where recorded, at least 2."""
    d = stats.mu.shape[0] if stats.mu.ndim == 1 else -1
    if d < 1 or stats.sigma.shape != (d, d):
        raise DdimError(
            f"{name}: mu {stats.mu.shape} and sigma {stats.sigma.shape} must be (D,) and (D, D)"
        )
    if not (np.isfinite(stats.mu).all() and np.isfinite(stats.sigma).all()):
        raise DdimError(f"{name}: mu or sigma holds NaN or infinite values")
    scale = max(float(np.abs(stats.sigma).max()), np.finfo(np.float64).tiny)
    if float(np.abs(stats.sigma - stats.sigma.T).max()) > 1e-6 * scale:
        raise DdimError(f"{name}: sigma is not symmetric, so not a covariance")
    distances.psd_eigenvalues(torch.from_numpy(stats.sigma), f"{name}: sigma")
    if stats.n != -1 and stats.n < 2:
        raise DdimError(f"{name}: made from n = {stats.n} images; a covariance needs >= 2")
    if stats.features is not None:
        validate_features(stats.features, d, stats.n, name)


def validate_features(features: np.ndarray, d: int, n: int, name: str = "FID stats") -> None:
    """Raise a DdimError unless the stored KID features are a finite float32 or float64 (K, D)
    array with 2 <= K <= n (n = -1: unknown)."""
    if features.dtype not in (np.float32, np.float64):
        raise DdimError(f"{name}: features are {features.dtype}, not float32")
    if features.ndim != 2 or features.shape[1] != d:
        raise DdimError(f"{name}: features {features.shape} must be (K, {d}), like mu")
    if not 2 <= features.shape[0] <= (n if n != -1 else features.shape[0]):
        raise DdimError(f"{name}: {features.shape[0]} feature rows for n = {n} images; "
                        f"KID needs between 2 and n")
    if not np.isfinite(features).all():
        raise DdimError(f"{name}: features hold NaN or infinite values")


def check_resolution(stats: FidStats, size: int, name: str, what: str = "the images") -> None:
    """Refuse to score `size`² images against statistics of images of another size."""
    if stats.resolution is not None and stats.resolution != size:
        raise DdimError(
            f"{what} are {size}x{size} but {name} holds statistics of "
            f"{stats.resolution}x{stats.resolution} images, so FID would mostly measure the "
            f"resizing; make a reference at {size} px (`ddim fid ref DATA --resolution {size}`)"
        )


def check_compatible(stats: FidStats, name: str = "reference stats") -> None:
    """Raise DdimError unless `stats` were made with this network file and this convention."""
    redo = "recompute them with `ddim fid ref`"
    if stats.network_sha256 == "unknown" or stats.convention == "unknown":
        raise DdimError(f"{name}: no network hash or convention recorded (foreign file?); {redo}")
    if stats.network_sha256 != inception.network_sha256():
        raise DdimError(
            f"{name}: made with Inception network sha256 {stats.network_sha256[:16]}…, "
            f"not this one ({inception.network_sha256()[:16]}…); {redo}"
        )
    if stats.convention != CONVENTION:
        raise DdimError(f"{name}: FID convention '{stats.convention}', not '{CONVENTION}'; {redo}")
