"""The exact-moment machinery behind `ddim oracle`, and the paper's few-step observation."""

import torch

from ddim.diffusion.oracle import (
    GaussianMoments,
    GaussianOracle,
    exact_output_moments,
    frechet_distance_diagonal,
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
