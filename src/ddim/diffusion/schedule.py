"""Noise schedules β_t, their products ᾱ_t, the half log-SNR λ_t, and the timestep sub-sequences τ
that samplers walk.

Conventions (those of the official DDIM code, ermongroup/ddim):
- timesteps are integer indices t ∈ [0, T); ᾱ_t = ∏_{s≤t} (1 − β_s), so ᾱ_0 = 1 − β_0;
- "t = −1" stands for clean data, with ᾱ_{−1} = 1. Samplers walk the sequence (−1, τ_1, …, τ_S),
  so the last step (τ_1 → −1) needs no special case.

All tables are float64 on the CPU; samplers turn the few values they need into Python floats once.
Betas may come as a tensor on any device, a NumPy array or a list (`as_betas`); counts as Python,
NumPy or PyTorch integers (`ddim.scalars`).
A schedule is checked where ᾱ is made (`alpha_bars`, which `make_betas` and every sampler call):
β in (0, 1], and ᾱ never below float32's smallest normal number, so x_0 = (x_t − √(1 − ᾱ) ε)/√ᾱ
stays finite; a schedule whose ᾱ reaches 0 (jsd's last β is 1) or underflows is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch

from ddim.errors import DdimError
from ddim.scalars import as_float, as_int

BetaSchedule = Literal["linear", "quad", "const", "jsd", "sigmoid", "cosine"]
Skip = Literal["uniform", "quad", "trailing", "logsnr"]
BETA_SCHEDULES: tuple[str, ...] = get_args(BetaSchedule)
SKIP_KINDS: tuple[str, ...] = get_args(Skip)
ALPHA_BAR_MIN = torch.finfo(torch.float32).tiny  # 2^-126: 1/√ᾱ stays finite in float32


def make_betas(
    kind: str = "linear",
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> torch.Tensor:
    """β_1..β_T as a float64 tensor: the official DDIM code's five schedules plus `cosine`.

    linear  — linspace(β_start, β_end, T) (DDPM, Ho et al. 2020, Sec. 4);
    quad    — linspace(√β_start, √β_end, T)²;
    const   — β_end everywhere;
    jsd     — 1/T, 1/(T−1), …, 1 (Sohl-Dickstein et al. 2015); its last β is 1, so ᾱ reaches 0
              and the schedule is refused (`alpha_bars`): no sampler can start from x_T;
    sigmoid — sigmoid(linspace(−6, 6, T)) · (β_end − β_start) + β_start;
    cosine  — Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008,
              β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999); β_start and β_end are not used.
    """
    T = as_int(num_timesteps, "num_timesteps")
    beta_start, beta_end = as_float(beta_start, "beta_start"), as_float(beta_end, "beta_end")
    if T < 1:
        raise DdimError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    if kind != "cosine" and not 0 < beta_start <= beta_end < 1:
        raise DdimError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
    betas = _betas(kind, T, beta_start, beta_end)
    alpha_bars(betas)  # refuses a schedule whose ᾱ reaches 0
    return betas


def as_betas(betas) -> torch.Tensor:
    """β as a 1-D float64 tensor on the CPU, from a tensor (any device and float dtype), a NumPy
    array or a sequence of numbers; anything else is a DdimError naming `betas`."""
    try:
        if not isinstance(betas, torch.Tensor):
            betas = torch.as_tensor(betas)
        betas = betas.detach().to("cpu", torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise DdimError(f"betas must be a 1-D tensor or array of numbers, got "
                        f"{type(betas).__name__}", argument="betas") from None
    if betas.ndim != 1 or len(betas) == 0:
        raise DdimError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}",
                        argument="betas")
    return betas


def _betas(kind: str, T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """β_1..β_T of one of the schedules `make_betas` names (arguments already checked)."""
    f64 = torch.float64
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=f64)
    if kind == "quad":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=f64) ** 2
    if kind == "const":
        return torch.full((T,), beta_end, dtype=f64)
    if kind == "jsd":
        return 1.0 / torch.linspace(T, 1, T, dtype=f64)
    if kind == "sigmoid":
        return (
            torch.sigmoid(torch.linspace(-6, 6, T, dtype=f64)) * (beta_end - beta_start)
            + beta_start
        )
    if kind == "cosine":
        return _cosine_betas(T)
    raise DdimError(f"unknown beta schedule {kind!r}; choose one of {', '.join(BETA_SCHEDULES)}")


def _cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule, eq. 17, with β clipped at `max_beta`."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def alpha_bars(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 − β_s) for t = 0..T−1 (DDIM paper's α_t, DDPM's ᾱ_t), in float64.

    β must be finite and in (0, 1], and ᾱ must stay at or above `ALPHA_BAR_MIN`; else a DdimError
    naming the first t where it does not (every sampler would return NaN or infinity there).
    """
    betas = as_betas(betas)
    bad = (~(torch.isfinite(betas) & (betas > 0) & (betas <= 1))).nonzero()
    if len(bad):
        t = int(bad[0])
        raise DdimError(f"beta must lie in (0, 1], got {float(betas[t])!r} at t = {t}")
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    if alpha_bar[-1] < ALPHA_BAR_MIN:
        t = int((alpha_bar < ALPHA_BAR_MIN).nonzero()[0])
        why = (f"β = 1 at t = {t}, so ᾱ is 0 from there on" if betas[t] == 1 else
               f"ᾱ falls to {float(alpha_bar[t]):.3g} at t = {t} of T = {len(betas)}, below "
               "float32's smallest normal number 1.2e-38")
        raise DdimError(
            f"{why}: x_0 = (x_t - √(1 - ᾱ)ε)/√ᾱ is not finite there, so every sampler would "
            "return NaN; use fewer timesteps or smaller betas"
        )
    return alpha_bar


def betas_from_alpha_bars(alpha_bar: torch.Tensor) -> torch.Tensor:
    """β_t = 1 − ᾱ_t/ᾱ_{t−1} with ᾱ_{−1} = 1: the schedule whose products are `alpha_bar` (the
    inverse of `alpha_bars`), in float64."""
    alpha_bar = alpha_bar.to(torch.float64)
    previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return 1 - alpha_bar / previous


def lambdas(alpha_bar: torch.Tensor) -> torch.Tensor:
    """λ_t = log(√ᾱ_t / √(1 − ᾱ_t)) for every t: half the log signal-to-noise ratio, DPM-Solver's
    time variable, in float64."""
    alpha_bar = alpha_bar.to(torch.float64)
    return 0.5 * (torch.log(alpha_bar) - torch.log1p(-alpha_bar))


def half_log_snr(alpha_bar: float) -> float:
    """λ = log(√ᾱ / √(1 − ᾱ)) of one ᾱ, with λ = ∞ for clean data (ᾱ = 1)."""
    return math.inf if alpha_bar >= 1 else 0.5 * math.log(alpha_bar / (1 - alpha_bar))


def alpha_bar_at(alpha_bar: torch.Tensor, t: int) -> float:
    """ᾱ_t as a Python float, with the convention ᾱ_{−1} = 1 (clean data)."""
    return 1.0 if t < 0 else float(alpha_bar[t])


def timesteps(
    num_timesteps: int,
    steps: int | Sequence[int],
    skip: str = "uniform",
    *,
    betas: torch.Tensor | None = None,
) -> list[int]:
    """The ascending sub-sequence τ of [0, T) that a sampler walks (DDIM paper, Sec. 4.2, App. D).

    `steps` is S, the number of steps (a Python, NumPy or PyTorch integer), or an explicit
    increasing list, array or 1-D tensor of timesteps (then `skip` is ignored). `betas`, the
    schedule, is needed by `logsnr` only. The result holds Python ints.
    - uniform:  ⌊i·T/S⌋ for i = 0..S−1. When S divides T this is the official range(0, T, T // S);
                otherwise the official code runs more than S steps (range(0, 1000, 1000 // 30) has
                31 entries), while this gives exactly S.
    - quad:     ⌊linspace(0, √(0.8·T), S)²⌋, the official code's; used for CIFAR-10 (App. D.2).
                For S ≳ 50 it repeats small timesteps (S = 100 gives 96 distinct values). A
                repeated pair is an identity step, so repeats are dropped: the images are the
                same, with fewer network calls; `len(result)` is the number of calls made.
    - trailing: ⌊(i+1)·T/S⌋ − 1 for i = 0..S−1, ending at T − 1 (Lin et al. 2024).
    - logsnr:   for S values of λ evenly spaced from λ_0 to λ_{T−1} (λ_t = log(√ᾱ_t/√(1 − ᾱ_t))),
                the integer t whose λ_t is nearest: DPM-Solver's spacing, uniform in λ, from 0 to
                T − 1. Integer timesteps cannot be closer in λ than adjacent ones, and near t = 0
                those are far apart (λ_0 − λ_1 = 0.39 for the linear schedule, T = 1000, where the
                λ range is 9.7), so for large S several values land on one small t; repeats are
                dropped, as for quad (S = 160 gives 144 distinct timesteps there).
    """
    T = as_int(num_timesteps, "num_timesteps")
    if T < 1:
        raise DdimError(f"num_timesteps must be >= 1, got {T}", argument="num_timesteps")
    steps = _count_or_list(steps)
    if isinstance(steps, list):
        return _check_explicit(T, steps)
    if steps < 1 or steps > T:
        raise DdimError(f"steps must be between 1 and T = {T}, got {steps}", argument="steps")
    if skip == "uniform":
        return [i * T // steps for i in range(steps)]
    if skip == "trailing":
        return [(i + 1) * T // steps - 1 for i in range(steps)]
    if skip == "quad":
        grid = torch.linspace(0, math.sqrt(0.8 * T), steps, dtype=torch.float64) ** 2
        return sorted({int(v) for v in grid.tolist()})
    if skip == "logsnr":
        return _logsnr_timesteps(T, steps, betas)
    raise DdimError(f"skip={skip!r} is not a skip kind: choose one of {', '.join(SKIP_KINDS)}",
                    argument="skip")


def _count_or_list(steps) -> int | list:
    """S as a Python int (any library's integer, a 0-d tensor or array), or the explicit
    timesteps of a sequence, array or 1-D tensor as a list."""
    if getattr(steps, "ndim", 0) > 0:
        return list(steps.tolist())
    if isinstance(steps, (list, tuple, range)):
        return list(steps)
    try:
        return as_int(steps, "steps")
    except DdimError:
        raise DdimError(f"steps={steps!r} must be an integer S or a list of timesteps",
                        argument="steps") from None


def _logsnr_timesteps(T: int, steps: int, betas: torch.Tensor | None) -> list[int]:
    """The distinct integer t nearest in λ to S values evenly spaced from λ_0 to λ_{T−1}."""
    if betas is None:
        raise DdimError("skip 'logsnr' spaces timesteps evenly in log-SNR, so it needs the betas")
    betas = as_betas(betas)
    if len(betas) != T:
        raise DdimError(f"skip 'logsnr' got {len(betas)} betas for T = {T} timesteps")
    lam = lambdas(alpha_bars(betas))  # decreasing in t
    if not (torch.isfinite(lam[[0, -1]]).all() and (lam[1:] < lam[:-1]).all()):
        raise DdimError("skip 'logsnr' needs 0 < ᾱ_t < 1 decreasing in t, which these betas lack")
    targets = torch.linspace(float(lam[0]), float(lam[-1]), steps, dtype=torch.float64)
    # −λ increases with t: each target lies between the timesteps `below` and `above`
    above = torch.searchsorted(-lam, -targets).clamp(max=T - 1)
    below = (above - 1).clamp(min=0)
    nearer_below = (lam[below] - targets).abs() <= (lam[above] - targets).abs()
    return sorted(set(torch.where(nearer_below, below, above).tolist()))


def _check_explicit(T: int, seq: list[int]) -> list[int]:
    """Validate an explicit timestep list: non-empty integers, strictly increasing, in [0, T)."""
    if not seq:
        raise DdimError("steps, the explicit timestep list, is empty", argument="steps")
    try:
        seq = [as_int(value, "steps") for value in seq]
    except DdimError:
        raise DdimError(f"steps, the explicit timesteps, must be integers, got {seq!r}",
                        argument="steps") from None
    if seq[0] < 0 or seq[-1] >= T:
        raise DdimError(f"steps, the explicit timesteps, must lie in [0, {T}), got "
                        f"{seq[0]}..{seq[-1]}", argument="steps")
    for a, b in zip(seq, seq[1:]):
        if b <= a:
            raise DdimError(f"steps, the explicit timesteps, must be strictly increasing, got "
                            f"{a} then {b}", argument="steps")
    return seq
