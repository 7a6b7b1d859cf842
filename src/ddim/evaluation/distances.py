"""The distances between two sets of features: the Fréchet distance (Heusel et al., 2017) of their
Gaussians and the Kernel Inception Distance (Bińkowski et al., 2018); pure functions of arrays.

FID = ||mu_r - mu_g||² + Tr(S_r + S_g - 2 (S_r S_g)^½), where (mu, S) are the mean and the unbiased
(N - 1) covariance of the features, accumulated in float64. Tr (S_r S_g)^½ is taken as
Σ sqrt(eig(S_r^½ S_g S_r^½)) from symmetric eigen-decompositions: the same number as the
references' scipy.linalg.sqrtm (to ~1e-12 relative on full-rank covariances), real, stable when
N < 2048 makes S singular, and faster; `method="sqrtm"` gives theirs.

KID is the unbiased estimate of the squared MMD between the two feature distributions under the
cubic polynomial kernel k(x, y) = (xᵀy/d + 1)³, d = 2048, averaged over 100 random subsets of
1,000 features of each set (fewer when a set is smaller; the sizes clean-fid and torch-fidelity
use), reported with its standard deviation over the subsets. Unlike FID it has no bias
that depends on N, which is what makes it the score to compare at the small N that CPUs afford.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch

from ddim.errors import DdimError

KID_SUBSETS = 100  # subsets averaged per KID
KID_SUBSET_SIZE = 1000  # features per subset and set (fewer when a set is smaller)


# --- the Fréchet distance ----------------------------------------------------------------------


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (divides by N - 1) of features (N, D), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise DdimError(f"FID statistics need at least 2 images, got {features.shape[0]}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def psd_eigenvalues(matrix: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric PSD matrix; round-off-sized eigenvalues set to 0."""
    w, v = torch.linalg.eigh((matrix + matrix.T) / 2)
    tol = w.abs().max() * w.shape[0] * torch.finfo(w.dtype).eps
    if w.min() < -max(tol, 1e-6 * w.abs().max()):
        raise DdimError(f"{name} is not positive semi-definite (eigenvalue {w.min():.3g})")
    return torch.where(w > tol, w, 0), v


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr (S1 S2)^½ for PSD S1, S2, as Σ sqrt(eig(S1^½ S2 S1^½)) (S1 S2 has those eigenvalues)."""
    s1, s2 = torch.tensor(sigma1, dtype=torch.float64), torch.tensor(sigma2, dtype=torch.float64)
    w1, v1 = psd_eigenvalues(s1, "sigma1")
    root1 = (v1 * w1.sqrt()) @ v1.T
    w, _ = psd_eigenvalues(root1 @ s2 @ root1, "S1^½ S2 S1^½")
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
