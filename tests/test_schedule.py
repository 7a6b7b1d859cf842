import math

import numpy as np
import pytest
import torch

from ddim.diffusion import schedule
from ddim.errors import DdimError


def test_linear_is_the_ddpm_schedule():
    betas = schedule.make_betas("linear", 1000, 1e-4, 0.02)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    np.testing.assert_allclose(betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("quad", lambda T, b0, b1: np.linspace(b0**0.5, b1**0.5, T) ** 2),
        ("const", lambda T, b0, b1: np.full(T, b1)),
        ("sigmoid", lambda T, b0, b1: b0 + (b1 - b0) / (1 + np.exp(-np.linspace(-6, 6, T)))),
    ],
)
def test_official_schedules(kind, expected):
    betas = schedule.make_betas(kind, 200, 1e-4, 0.02).numpy()
    np.testing.assert_allclose(betas, expected(200, 1e-4, 0.02), rtol=1e-12, atol=1e-15)


def test_jsd_is_the_official_formula_and_refused_because_its_alpha_bar_reaches_zero():
    betas = schedule._betas("jsd", 200, 1e-4, 0.02).numpy()
    np.testing.assert_allclose(betas, [1.0 / (200 - i) for i in range(200)], rtol=1e-12)
    with pytest.raises(DdimError, match=r"β = 1 at t = 199, so ᾱ is 0"):
        schedule.make_betas("jsd", 200)


def test_cosine_matches_its_alpha_bar_closed_form():
    T = 1000
    alpha_bar = schedule.alpha_bars(schedule.make_betas("cosine", T)).numpy()
    f = [math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]
    closed = np.array([f[t + 1] / f[0] for t in range(T)])
    # β is clipped at 0.999 only at the very end; elsewhere ᾱ_t = f(t+1)/f(0) exactly
    np.testing.assert_allclose(alpha_bar[:-1], closed[:-1], rtol=1e-9)
    assert (schedule.make_betas("cosine", T) <= 0.999).all()


def test_alpha_bar_is_cumulative_product_and_t_minus_one_is_clean():
    betas = schedule.make_betas("linear", 10, 0.1, 0.5)
    alpha_bar = schedule.alpha_bars(betas)
    assert alpha_bar[0].item() == pytest.approx(0.9)
    assert alpha_bar[3].item() == pytest.approx(float(np.prod(1 - betas.numpy()[:4])))
    assert schedule.alpha_bar_at(alpha_bar, -1) == 1.0


def test_bad_schedule_arguments():
    with pytest.raises(DdimError, match="unknown beta schedule 'cosin'"):
        schedule.make_betas("cosin", 10)
    with pytest.raises(DdimError, match="beta_start"):
        schedule.make_betas("linear", 10, 0.5, 0.1)
    with pytest.raises(DdimError, match="num_timesteps"):
        schedule.make_betas("linear", 0)


def test_uniform_reproduces_official_range_when_s_divides_t():
    for S in (10, 20, 50, 100, 1000):
        assert schedule.timesteps(1000, S, "uniform") == list(range(0, 1000, 1000 // S))


def test_uniform_gives_exactly_s_steps_otherwise():
    seq = schedule.timesteps(1000, 30, "uniform")
    assert len(seq) == 30 and seq[0] == 0 and seq == sorted(set(seq))
    assert len(range(0, 1000, 1000 // 30)) == 31  # what the official code would run


def test_quad_reproduces_official_sequence_without_repeats():
    for S in (10, 20, 50, 100):
        official = [int(s) for s in np.linspace(0, np.sqrt(1000 * 0.8), S) ** 2]
        assert schedule.timesteps(1000, S, "quad") == sorted(set(official))
    assert len(schedule.timesteps(1000, 100, "quad")) == 96
    assert len(schedule.timesteps(1000, 10, "quad")) == 10


def test_trailing_ends_at_last_timestep():
    seq = schedule.timesteps(1000, 10, "trailing")
    assert seq == [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]
    assert len(schedule.timesteps(1000, 7, "trailing")) == 7
    assert schedule.timesteps(1000, 7, "trailing")[-1] == 999


def test_logsnr_is_nearest_in_lambda_to_an_even_grid():
    betas = schedule.make_betas("linear", 1000)
    lam = schedule.lambdas(schedule.alpha_bars(betas)).numpy()
    for S in (2, 10, 20, 160):
        seq = schedule.timesteps(1000, S, "logsnr", betas=betas)
        targets = np.linspace(lam[0], lam[-1], S)
        nearest = sorted({int(np.abs(lam - target).argmin()) for target in targets})
        assert seq == nearest and seq[0] == 0 and seq[-1] == 999
    # with few steps every target has its own timestep, and the λ gaps are even to rounding
    seq = schedule.timesteps(1000, 10, "logsnr", betas=betas)
    assert seq == [0, 5, 22, 73, 202, 410, 603, 757, 886, 999]
    gaps = -np.diff(lam[seq])
    np.testing.assert_allclose(gaps, (lam[0] - lam[-1]) / 9, rtol=0.15)
    # near t = 0 adjacent timesteps lie further apart in λ than S = 160's even spacing, so the
    # grid repeats them there; repeats are dropped
    assert lam[0] - lam[1] > 5 * (lam[0] - lam[-1]) / 159
    assert len(schedule.timesteps(1000, 160, "logsnr", betas=betas)) == 144


def test_logsnr_is_plain_on_a_schedule_linear_in_lambda():
    """When λ falls linearly in t, the λ-even grid is the t-even one (9 divides 999)."""
    alpha_bar = torch.sigmoid(2 * torch.linspace(5.0, -5.0, 1000, dtype=torch.float64))
    betas = schedule.betas_from_alpha_bars(alpha_bar)
    torch.testing.assert_close(schedule.alpha_bars(betas), alpha_bar, rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.lambdas(alpha_bar), torch.linspace(5.0, -5.0, 1000,
                               dtype=torch.float64), rtol=0, atol=1e-9)
    assert schedule.timesteps(1000, 10, "logsnr", betas=betas) == list(range(0, 1000, 111))


def test_half_log_snr_is_infinite_for_clean_data():
    assert schedule.half_log_snr(1.0) == math.inf
    assert schedule.half_log_snr(0.5) == 0.0
    assert schedule.half_log_snr(0.8) == pytest.approx(math.log(2))


def test_logsnr_needs_a_usable_schedule():
    with pytest.raises(DdimError, match="needs the betas"):
        schedule.timesteps(1000, 10, "logsnr")
    with pytest.raises(DdimError, match="got 10 betas for T = 1000"):
        schedule.timesteps(1000, 10, "logsnr", betas=schedule.make_betas("linear", 10))
    ending_at_one = torch.linspace(1e-4, 1.0, 1000, dtype=torch.float64)  # ᾱ reaches 0: λ = −∞
    with pytest.raises(DdimError, match="0 < ᾱ_t < 1|not finite"):
        schedule.timesteps(1000, 10, "logsnr", betas=ending_at_one)
    assert schedule.timesteps(1000, [3, 7], "logsnr") == [3, 7]  # an explicit list needs none


def test_explicit_list():
    assert schedule.timesteps(1000, [0, 5, 999]) == [0, 5, 999]
    assert schedule.timesteps(1000, np.array([0, 5])) == [0, 5]


@pytest.mark.parametrize(
    "steps, skip, message",
    [
        (0, "uniform", "steps must be between 1 and T = 1000, got 0"),
        (1001, "uniform", "got 1001"),
        (10, "linear", "skip='linear' is not a skip kind"),
        ([], "uniform", "empty"),
        ([0, 10, 10], "uniform", "strictly increasing, got 10 then 10"),
        ([5, 1], "uniform", "strictly increasing"),
        ([0, 1000], "uniform", r"\[0, 1000\)"),
        ([-1, 3], "uniform", r"\[0, 1000\)"),
        ([0.5, 3], "uniform", "integers"),
    ],
)
def test_invalid_timesteps_are_rejected(steps, skip, message):
    with pytest.raises(DdimError, match=message):
        schedule.timesteps(1000, steps, skip)
