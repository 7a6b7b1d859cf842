"""Exact answers for Gaussian data: the optimal ε-predictor and the samplers' exact output moments.

For data x_0 ~ N(μ, diag(s²)), the forward marginal is x_t ~ N(√ᾱ_t μ, diag(ᾱ_t s² + 1 − ᾱ_t)), and
the MMSE-optimal noise predictor is linear in x_t:

    ε*(x_t, t) = E[ε | x_t] = √(1 − ᾱ_t) · (x_t − √ᾱ_t μ) / (ᾱ_t s² + 1 − ᾱ_t).

With ε* every sampler step is affine in x plus independent Gaussian noise, so the distribution of
the output is Gaussian with moments that follow by a two-line recursion. That lets the samplers be
checked against the true data distribution with no training at all.

The probability-flow ODE itself is solved in closed form too. In DDIM's eq. 14 variables,
x̄ = x/√ᾱ and σ = √((1 − ᾱ)/ᾱ), it reads dx̄/dσ = ε*(x, t), and ε* = σ (x̄ − μ)/(s² + σ²), so
x̄ − μ grows as √(s² + σ²): along a solution

    x_t = √ᾱ_t μ + √(ᾱ_t s² + 1 − ᾱ_t) · z,  per dimension, with z fixed,

down to x_0 = μ + s z at ᾱ = 1. Every ODE solver can thus be measured against the exact path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddim.diffusion.samplers import PlanStep
from ddim.diffusion.schedule import alpha_bar_at, alpha_bars


class GaussianOracle:
    """The exact ε-predictor ε*(x_t, t) for x_0 ~ N(mean, diag(std²)) under the schedule `betas`."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, betas: torch.Tensor):
        self.mean = mean
        self.variance = std**2
        self.alpha_bar = alpha_bars(betas)
        self.calls = 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε* at x_t for a 1-D tensor of timesteps t (one per row of x_t)."""
        self.calls += 1
        shape = (-1, *([1] * (x_t.dim() - 1)))
        a = self.alpha_bar.to(x_t.device)[t].view(shape)
        mean = self.mean.to(x_t.device, torch.float64)
        var = self.variance.to(x_t.device, torch.float64)
        eps = (1 - a).sqrt() * (x_t.double() - a.sqrt() * mean) / (a * var + 1 - a)
        return eps.to(x_t.dtype)

    def ode_solution(self, x: torch.Tensor, t_from: int, t_to: int) -> torch.Tensor:
        """The point at t_to of the probability-flow ODE (DDIM eq. 14) through x at t_from, exactly
        (`probability_flow`); t = −1 is clean data."""
        a_from, a_to = alpha_bar_at(self.alpha_bar, t_from), alpha_bar_at(self.alpha_bar, t_to)
        return probability_flow(x, a_from, a_to, self.mean, self.variance.sqrt())


def probability_flow(
    x: torch.Tensor, alpha_bar_from: float, alpha_bar_to: float, mean: torch.Tensor,
    std: torch.Tensor,
) -> torch.Tensor:
    """Exact solution of the probability-flow ODE (DDIM eq. 14) with ε* from ᾱ_from to ᾱ_to:
    x_to = √ᾱ_to μ + √(ᾱ_to s² + 1 − ᾱ_to) z, z = (x − √ᾱ_from μ)/√(ᾱ_from s² + 1 − ᾱ_from)."""
    a, b = alpha_bar_from, alpha_bar_to
    mean = mean.to(x.device, torch.float64)
    var = std.to(x.device, torch.float64) ** 2
    z = (x.double() - math.sqrt(a) * mean) / (a * var + 1 - a).sqrt()  # fixed along the path
    return (math.sqrt(b) * mean + (b * var + 1 - b).sqrt() * z).to(x.dtype)


def ode_error(
    solver: Callable[..., torch.Tensor], oracle: GaussianOracle, betas: torch.Tensor,
    x_T: torch.Tensor, seq: Sequence[int],
) -> float:
    """RMS distance at t = τ_1, the last timestep, between a deterministic solver run on ε* from
    x_T at τ_S and the exact ODE solution; `solver` is called as `ddim.sample` is.

    The last step, τ_1 → clean data (λ = ∞), is left out: it is one first-order step of the same
    size for every S, an error of its own that does not fall with S.
    """
    at_last = []
    keep = lambda step: at_last.append(step.x) if step.t_next == seq[0] else None  # noqa: E731
    solver(oracle, x_T, betas, steps=seq, callback=keep)
    exact = oracle.ode_solution(x_T, seq[-1], seq[0])
    return float((at_last[0].double() - exact.double()).square().mean().sqrt())


@dataclass(frozen=True)
class GaussianMoments:
    """Mean and per-dimension variance of a Gaussian with diagonal covariance."""

    mean: torch.Tensor
    variance: torch.Tensor


def step_coefficients(step: PlanStep, variance: torch.Tensor):
    """(A, B) with the step's output = A·x + B·μ + noise_sigma·z when ε = ε* (no clipping)."""
    a_t, a_s = step.alpha_bar_from, step.alpha_bar_to
    k = math.sqrt(1 - a_t) / (a_t * variance + 1 - a_t)  # ε* = k (x − √ᾱ_t μ)
    direction = math.sqrt(max(1 - a_s - step.sigma**2, 0.0))
    x0_from_x = (1 - math.sqrt(1 - a_t) * k) / math.sqrt(a_t)
    A = math.sqrt(a_s) * x0_from_x + direction * k
    B = math.sqrt(a_s) * math.sqrt(1 - a_t) * k - direction * k * math.sqrt(a_t)
    return A, B


def exact_output_moments(
    plan: Sequence[PlanStep],
    data_mean: torch.Tensor,
    data_std: torch.Tensor,
    start: GaussianMoments,
) -> GaussianMoments:
    """The exact distribution of a walk's output when ε = ε* and its input is Gaussian."""
    variance = data_std.double() ** 2
    mean, var = start.mean.double(), start.variance.double()
    for step in plan:
        A, B = step_coefficients(step, variance)
        mean = A * mean + B * data_mean.double()
        var = A**2 * var + step.noise_sigma**2
    return GaussianMoments(mean, var)


def frechet_distance_diagonal(p: GaussianMoments, q: GaussianMoments) -> float:
    """Fréchet (2-Wasserstein²) distance between Gaussians with diagonal covariances:
    ‖μ_p − μ_q‖² + Σ (√v_p − √v_q)²."""
    mean_term = (p.mean - q.mean).square().sum()
    cov_term = (p.variance.sqrt() - q.variance.sqrt()).square().sum()
    return float(mean_term + cov_term)


def toy_data(dim: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed image-like Gaussian: means in [−0.6, 0.6], standard deviations 0.01 to 0.5."""
    g = torch.Generator().manual_seed(seed)
    mean = (torch.rand(dim, generator=g, dtype=torch.float64) - 0.5) * 1.2
    std = torch.logspace(math.log10(0.01), math.log10(0.5), dim, dtype=torch.float64)
    return mean, std
