"""The exact-moment machinery behind `ddim oracle`, the closed-form probability-flow ODE, and the
paper's few-step observation."""

import math

import torch

from ddim.diffusion.oracle import (
    GaussianMoments,
    GaussianOracle,
    exact_output_moments,
    frechet_distance_diagonal,
    probability_flow,
    toy_data,
)
from ddim.diffusion.samplers import ddim_plan, ddpm_plan, walk
from ddim.diffusion.schedule import make_betas, timesteps

BETAS = make_betas("linear", 1000)


def start(dim):
    return GaussianMoments(
        torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64)
    )


def test_exact_moments_match_running_the_sampler():
    mean, std = toy_data(4)
    oracle = GaussianOracle(mean, std, BETAS)
    plan = ddpm_plan(BETAS, timesteps(1000, 10, "uniform"), "large")
    n = 200_000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    for step in walk(oracle, x, plan, generator=g):
        x = step.x
    exact = exact_output_moments(plan, mean, std, start(4))
    torch.testing.assert_close(
        x.mean(0), exact.mean, atol=6 * float(exact.variance.max() / n) ** 0.5, rtol=0
    )
    torch.testing.assert_close(x.var(0), exact.variance, rtol=0.02, atol=0)


def test_full_ancestral_sampling_recovers_the_data():
    mean, std = toy_data(64)
    plan = ddpm_plan(BETAS, list(range(1000)), "large")
    out = exact_output_moments(plan, mean, std, start(64))
    assert frechet_distance_diagonal(out, GaussianMoments(mean, std**2)) < 1e-4


def test_deterministic_beats_ddpm_at_ten_steps():
    """The paper's Table 1 trend: at S = 10, η = 0 is closer to the data than η = 1 and σ̂."""
    mean, std = toy_data(64)
    data = GaussianMoments(mean, std**2)
    for skip in ("uniform", "quad"):
        seq = timesteps(1000, 10, skip)
        fd = {
            eta: frechet_distance_diagonal(
                exact_output_moments(ddim_plan(BETAS, seq, eta), mean, std, start(64)), data
            )
            for eta in (0.0, 0.2, 0.5, 1.0)
        }
        large = exact_output_moments(ddpm_plan(BETAS, seq, "large"), mean, std, start(64))
        assert fd[0.0] < fd[0.2] < fd[0.5] < fd[1.0]
        assert fd[0.0] < frechet_distance_diagonal(large, data)


def test_frechet_distance_diagonal_closed_form():
    p = GaussianMoments(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 4.0]))
    q = GaussianMoments(torch.tensor([1.0, 1.0]), torch.tensor([4.0, 4.0]))
    assert frechet_distance_diagonal(p, q) == 1.0 + 1.0


def eq14_rk4(x_T, alpha_bar_from, alpha_bar_to, mean, std, n):
    """DDIM eq. 14, dx̄/dσ = ε*(x, t) with x̄ = x/√ᾱ and σ = √((1 − ᾱ)/ᾱ), by n classical RK4 steps
    even in u = log σ (dx̄/du = σ ε*); ε* written out for continuous ᾱ = 1/(1 + σ²)."""

    def slope(x_bar, u):
        sigma = math.exp(u)
        a = 1 / (1 + sigma**2)
        x = math.sqrt(a) * x_bar
        return sigma * math.sqrt(1 - a) * (x - math.sqrt(a) * mean) / (a * std**2 + 1 - a)

    u = 0.5 * math.log((1 - alpha_bar_from) / alpha_bar_from)
    h = (0.5 * math.log((1 - alpha_bar_to) / alpha_bar_to) - u) / n
    x_bar = x_T / math.sqrt(alpha_bar_from)
    for _ in range(n):
        k1 = slope(x_bar, u)
        k2 = slope(x_bar + h / 2 * k1, u + h / 2)
        k3 = slope(x_bar + h / 2 * k2, u + h / 2)
        k4 = slope(x_bar + h * k3, u + h)
        x_bar, u = x_bar + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), u + h
    return math.sqrt(alpha_bar_to) * x_bar


def test_closed_form_ode_solution_matches_a_fine_numerical_solve():
    mean, std = toy_data(8)
    oracle = GaussianOracle(mean, std, BETAS)
    x_T = torch.randn(16, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = oracle.alpha_bar
    for t_to in (500, 0):
        exact = oracle.ode_solution(x_T, 999, t_to)
        fine = eq14_rk4(x_T, float(a[999]), float(a[t_to]), mean, std, n=2000)
        coarse = eq14_rk4(x_T, float(a[999]), float(a[t_to]), mean, std, n=500)
        torch.testing.assert_close(exact, fine, rtol=0, atol=1e-9)
        # RK4's fourth order: 4× the steps, 256× less error (the comparison is not vacuous)
        assert (coarse - exact).abs().max() > 100 * (fine - exact).abs().max()


def test_closed_form_solves_eq14_with_the_oracles_epsilon():
    """d(x/√ᾱ)/dσ along the closed-form path, by autograd, is ε*(x_t, t) as GaussianOracle computes
    it, at timesteps across [0, T)."""
    mean, std = toy_data(8)
    oracle = GaussianOracle(mean, std, BETAS)
    x_T = torch.randn(4, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = oracle.alpha_bar
    for t in range(0, 1000, 37):
        # one σ per element, so the gradient of the sum is each element's own derivative
        sigma = torch.full((4, 8), math.sqrt((1 - a[t]) / a[t]), dtype=torch.float64,
                           requires_grad=True)
        alpha_bar = 1 / (1 + sigma**2)
        # probability_flow with ᾱ_to as a tensor: the closed form, written for autograd
        z = (x_T - math.sqrt(a[999]) * mean) / (a[999] * std**2 + 1 - a[999]).sqrt()
        x_bar = (alpha_bar.sqrt() * mean + (alpha_bar * std**2 + 1 - alpha_bar).sqrt() * z) / (
            alpha_bar.sqrt())
        (slope,) = torch.autograd.grad(x_bar.sum(), sigma)
        x_t = oracle.ode_solution(x_T, 999, t)
        torch.testing.assert_close(x_t, probability_flow(x_T, float(a[999]), float(a[t]), mean,
                                                         std))
        torch.testing.assert_close(slope, oracle(x_t, torch.full((4,), t)), rtol=1e-10,
                                   atol=1e-12)


def test_ode_solution_ends_in_the_data_distribution():
    """x_T ~ N(0, I) carried by the ODE to t = −1 is distributed as the data, exactly when x_T is
    the marginal at T (here ᾱ_999 ≈ 4e-5: close)."""
    mean, std = toy_data(4)
    oracle = GaussianOracle(mean, std, BETAS)
    x_T = torch.randn(100_000, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x_0 = oracle.ode_solution(x_T, 999, -1)
    torch.testing.assert_close(x_0.mean(0), mean, rtol=0, atol=6 * float(std.max()) / 100_000**0.5)
    torch.testing.assert_close(x_0.std(0), std, rtol=0.02, atol=0)
    torch.testing.assert_close(oracle.ode_solution(x_0, -1, 999), x_T)  # and back
