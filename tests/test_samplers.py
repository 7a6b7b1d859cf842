"""Samplers checked against exact answers: with Gaussian data the optimal ε-predictor is known in
closed form, every step is affine, and output moments follow by hand-written recursions below."""

import math

import numpy as np
import pytest
import torch

import ddim.diffusion.samplers as samplers
from ddim.diffusion.oracle import GaussianOracle, ode_error, toy_data
from ddim.diffusion.schedule import alpha_bars, betas_from_alpha_bars, make_betas, timesteps
from ddim.errors import DdimError

BETAS = make_betas("linear", 1000)
ALPHA_BAR = alpha_bars(BETAS)


def abar(t):
    return 1.0 if t < 0 else float(ALPHA_BAR[t])


def oracle_setup(dim=16, seed=0):
    mean, std = toy_data(dim, seed)
    return mean, std, GaussianOracle(mean, std, BETAS)


def hand_affine_ddim(seq, mean, std):
    """DDIM η = 0 with ε* as x ↦ A x + B, computed straight from eq. 12 (per dimension)."""
    A = torch.ones_like(mean)
    B = torch.zeros_like(mean)
    full = [-1, *seq]
    for i in range(len(full) - 1, 0, -1):
        a_t, a_s = abar(full[i]), abar(full[i - 1])
        k = math.sqrt(1 - a_t) / (a_t * std**2 + 1 - a_t)  # ε* = k (x − √a_t μ)
        # x_s = √a_s (x − √(1−a_t) ε)/√a_t + √(1−a_s) ε
        coef_x = math.sqrt(a_s / a_t) + (math.sqrt(1 - a_s) - math.sqrt(a_s / a_t * (1 - a_t))) * k
        const = -(math.sqrt(1 - a_s) - math.sqrt(a_s / a_t * (1 - a_t))) * k * math.sqrt(a_t) * mean
        A, B = coef_x * A, coef_x * B + const
    return A, B


@pytest.mark.parametrize("skip, S", [("uniform", 10), ("quad", 20), ("trailing", 7),
                                     ("logsnr", 12)])
def test_deterministic_ddim_is_the_hand_computed_affine_map(skip, S):
    mean, std, oracle = oracle_setup()
    x_T = torch.randn(32, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = samplers.sample(oracle, x_T, BETAS, steps=S, skip=skip, eta=0.0)
    seq = timesteps(1000, S, skip, betas=BETAS)
    A, B = hand_affine_ddim(seq, mean, std)
    torch.testing.assert_close(out, A * x_T + B, rtol=1e-10, atol=1e-10)
    assert oracle.calls == len(seq)


def test_every_public_sampler_walks_the_logsnr_grid_of_its_schedule():
    """`skip="logsnr"` reads the schedule: each API function walks τ of the betas it is given."""
    betas = make_betas("linear", 1000, 1e-4, 0.03)  # not the default schedule: its own λ grid
    seq = timesteps(1000, 8, "logsnr", betas=betas)
    assert seq != timesteps(1000, 8, "logsnr", betas=BETAS)
    seen = []
    model = lambda x, t: (seen.append(int(t[0])), torch.zeros_like(x))[1]  # noqa: E731
    x = torch.randn(2, 4, dtype=torch.float64)
    for run, order in [
        (lambda: samplers.sample(model, x, betas, steps=8, skip="logsnr"), seq[::-1]),
        (lambda: samplers.sample_ddpm(model, x, betas, steps=8, skip="logsnr"), seq[::-1]),
        (lambda: samplers.sample_dpmpp_2m(model, x, betas, steps=8, skip="logsnr"), seq[::-1]),
        (lambda: samplers.encode(model, x, betas, steps=8, skip="logsnr"), seq),
        (lambda: samplers.reconstruct(model, x, betas, steps=8, skip="logsnr"), seq + seq[::-1]),
    ]:  # fmt: skip
        seen.clear()
        run()
        assert seen == order


def hand_moments(seq, mean, std, eta):
    """Exact output mean and variance of eq. 12 with σ(η) of eq. 16, for x_T ~ N(0, I)."""
    m, v = torch.zeros_like(mean), torch.ones_like(mean)
    full = [-1, *seq]
    for i in range(len(full) - 1, 0, -1):
        a_t, a_s = abar(full[i]), abar(full[i - 1])
        sigma2 = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        k = math.sqrt(1 - a_t) / (a_t * std**2 + 1 - a_t)
        d = math.sqrt(1 - a_s - sigma2)
        coef_x = math.sqrt(a_s / a_t) * (1 - math.sqrt(1 - a_t) * k) + d * k
        const = math.sqrt(a_s / a_t) * math.sqrt(1 - a_t) * k * math.sqrt(a_t) * mean
        const = const - d * k * math.sqrt(a_t) * mean
        m, v = coef_x * m + const, coef_x**2 * v + sigma2
    return m, v


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_stochastic_sampler_has_exact_output_moments(eta):
    mean, std, oracle = oracle_setup(dim=4)
    n = 200_000
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(n, 4, generator=g, dtype=torch.float64)
    out = samplers.sample(oracle, x_T, BETAS, steps=20, eta=eta, generator=g)
    m, v = hand_moments(timesteps(1000, 20, "uniform"), mean, std, eta)
    # 6 standard errors of the sample mean and of the sample variance
    torch.testing.assert_close(out.mean(0), m, rtol=0, atol=float(6 * (v / n).sqrt().max()))
    torch.testing.assert_close(out.var(0), v, rtol=6 * math.sqrt(2 / n), atol=0)


def test_eta_one_is_the_ddpm_posterior_at_every_timestep():
    """η = 1, S = T: eq. 12 equals μ̃_t(x_t, x_0) + √β̃_t z (DDPM eqs. 6–7) for any ε."""
    g = torch.Generator().manual_seed(3)
    plan = samplers.ddim_plan(BETAS, list(range(1000)), eta=1.0)
    for step in plan[::37] + plan[-2:]:
        t = step.t_from
        x_t, eps, z = torch.randn(3, 8, generator=g, dtype=torch.float64)
        beta_t, a_t, a_prev = float(BETAS[t]), abar(t), abar(t - 1)
        x_0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        posterior_mean = (math.sqrt(a_prev) * beta_t / (1 - a_t)) * x_0 + (
            math.sqrt(1 - beta_t) * (1 - a_prev) / (1 - a_t)
        ) * x_t
        posterior_var = (1 - a_prev) / (1 - a_t) * beta_t
        out, _ = samplers.generalized_step(x_t, eps, step, z)
        torch.testing.assert_close(out, posterior_mean + math.sqrt(posterior_var) * z)


def official_ddpm_noisy(eps_model, x, seq, noise):
    """The official `ddpm_steps` update written from its formulas: clipped x_0, posterior mean,
    variance β_t = 1 − α_t/α_{t−1} on the sub-sequence, no noise at t = 0."""
    for i, (t, s) in enumerate(zip(reversed(seq), reversed([-1, *seq[:-1]]))):
        a_t, a_s = abar(t), abar(s)
        beta_t = 1 - a_t / a_s
        e = eps_model(x, torch.full((x.shape[0],), t))
        x0 = ((1 / a_t) ** 0.5 * x - (1 / a_t - 1) ** 0.5 * e).clamp(-1, 1)
        mean = (a_s**0.5 * beta_t * x0 + (1 - beta_t) ** 0.5 * (1 - a_s) * x) / (1 - a_t)
        x = mean + (t != 0) * beta_t**0.5 * noise[i]
    return x


def test_ddpm_large_variance_matches_official_ddpm_noisy():
    mean, std, oracle = oracle_setup(dim=6)
    seq = timesteps(1000, 50, "uniform")
    x_T = torch.randn(5, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    noise = torch.randn(
        len(seq), 5, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    # replay the same noise through our sampler by drawing from a generator we control
    draws = iter(noise)
    original = samplers.randn
    samplers.randn = lambda shape, generator, **kw: next(draws)
    try:
        ours = samplers.sample_ddpm(oracle, x_T, BETAS, steps=50, variance="large")
    finally:
        samplers.randn = original
    expected = official_ddpm_noisy(oracle, x_T, seq, noise)
    torch.testing.assert_close(ours, expected)


def test_ddpm_small_without_clipping_equals_eta_one():
    _, _, oracle = oracle_setup()
    x_T = torch.randn(4, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    a = samplers.sample(
        oracle, x_T, BETAS, steps=25, eta=1.0, generator=torch.Generator().manual_seed(7)
    )
    b = samplers.sample_ddpm(
        oracle,
        x_T,
        BETAS,
        steps=25,
        variance="small",
        clip_x0=False,
        generator=torch.Generator().manual_seed(7),
    )
    torch.testing.assert_close(a, b)


def test_encode_then_sample_error_shrinks_with_steps():
    mean, std, oracle = oracle_setup()
    g = torch.Generator().manual_seed(8)
    x_0 = mean + std * torch.randn(64, 16, generator=g, dtype=torch.float64)
    errors = []
    for S in (10, 50, 200, 1000):
        x_rec = samplers.reconstruct(oracle, x_0, BETAS, steps=S)
        errors.append((x_rec - x_0).square().mean().item())
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < errors[0] / 100
    assert errors[-1] < 1e-5


def test_encode_uses_the_same_labels_as_sampling():
    _, _, oracle = oracle_setup()
    seen = []
    recorder = lambda x, t: (seen.append(int(t[0])), oracle(x, t))[1]  # noqa: E731
    x = torch.zeros(2, 16, dtype=torch.float64)
    samplers.encode(recorder, x, BETAS, steps=10)
    up = list(seen)
    seen.clear()
    samplers.sample(recorder, x, BETAS, steps=10)
    assert up == timesteps(1000, 10, "uniform") and seen == up[::-1]


def test_repeated_timestep_is_an_identity_step():
    """`timesteps` drops quad's repeats because a plan over a repeated τ_i = τ_i−1 walks an
    identity step (σ = 0 whatever η, no noise drawn): the grid with its repeats, walked as it
    is, gives the images of τ without them, with more network calls."""
    _, _, oracle = oracle_setup()
    grid = torch.linspace(0, math.sqrt(0.8 * 1000), 100, dtype=torch.float64) ** 2
    repeated = [int(v) for v in grid.tolist()]
    tau = timesteps(1000, 100, "quad")
    assert len(repeated) == 100 and tau == sorted(set(repeated)) and len(tau) == 96
    plan = samplers.ddim_plan(BETAS, repeated, eta=1.0)
    same = [step for step in plan if step.t_from == step.t_to]
    assert len(same) == 4 and all(step.sigma == step.noise_sigma == 0 for step in same)
    x_T = torch.randn(3, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    walked = list(samplers.walk(oracle, x_T, plan, generator=torch.Generator().manual_seed(5)))
    direct = samplers.sample(oracle, x_T, BETAS, steps=100, skip="quad", eta=1.0,
                             generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert len(walked) == 100
    torch.testing.assert_close(walked[-1].x, direct, rtol=1e-12, atol=1e-12)


def test_quad_sampling_with_repeats_dropped_matches_explicit_list():
    _, _, oracle = oracle_setup()
    x_T = torch.randn(3, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    calls = []
    counting = lambda x, t: (calls.append(1), oracle(x, t))[1]  # noqa: E731
    a = samplers.sample(counting, x_T, BETAS, steps=100, skip="quad")
    assert len(calls) == 96
    b = samplers.sample(oracle, x_T, BETAS, steps=timesteps(1000, 100, "quad"))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_per_seed_images_do_not_depend_on_batch_size():
    _, _, oracle = oracle_setup()
    seeds = [11, 12, 13, 14]

    def run(batch_seeds):
        gens = samplers.generators_from_seeds(batch_seeds)
        x_T = samplers.randn((len(batch_seeds), 16), gens, dtype=torch.float64)
        return samplers.sample(oracle, x_T, BETAS, steps=10, eta=1.0, generator=gens)

    together = run(seeds)
    alone = torch.cat([run([s]) for s in seeds])
    torch.testing.assert_close(together, alone, rtol=0, atol=0)
    torch.testing.assert_close(run(seeds), together, rtol=0, atol=0)
    assert not torch.equal(run([11, 12]), run([12, 11]))


def test_callback_sees_every_step_on_device():
    _, _, oracle = oracle_setup()
    steps = []
    x_T = torch.randn(2, 16, dtype=torch.float64)
    out = samplers.sample(oracle, x_T, BETAS, steps=10, callback=steps.append)
    assert [s.t for s in steps] == timesteps(1000, 10, "uniform")[::-1]
    assert [s.t_next for s in steps] == [*timesteps(1000, 10, "uniform")[::-1][1:], -1]
    assert steps[-1].x is out and steps[0].x0_pred.device == x_T.device
    assert torch.equal(steps[-1].x0_pred, out)  # the last step lands on its own x_0 prediction


def test_clipping_is_off_by_default_and_explicit():
    wild = lambda x, t: -5 * torch.ones_like(x)  # noqa: E731  # predicts x_0 far outside [−1, 1]
    x_T = torch.zeros(1, 4, dtype=torch.float64)
    assert samplers.sample(wild, x_T, BETAS, steps=5).abs().max() > 1
    assert samplers.sample(wild, x_T, BETAS, steps=5, clip_x0=True).abs().max() <= 1


def test_slerp():
    z0 = torch.tensor([[1.0, 0.0, 0.0]])
    z1 = torch.tensor([[0.0, 1.0, 0.0]])
    torch.testing.assert_close(samplers.slerp(z0, z1, 0.0), z0)
    torch.testing.assert_close(samplers.slerp(z0, z1, 1.0), z1)
    torch.testing.assert_close(samplers.slerp(z0, z1, 0.5), (z0 + z1) / math.sqrt(2))
    torch.testing.assert_close(samplers.slerp(z0, z1, 1 / 3).norm(), torch.tensor(1.0))
    torch.testing.assert_close(samplers.slerp(z0, 2 * z0, 0.5), 1.5 * z0)  # parallel: linear


def test_interpolate_endpoints_are_reconstructions():
    mean, std, oracle = oracle_setup()
    g = torch.Generator().manual_seed(10)
    a, b = mean + std * torch.randn(2, 16, generator=g, dtype=torch.float64)
    path = samplers.interpolate(oracle, a, b, BETAS, steps=20, num=5)
    assert path.shape == (5, 16)
    rec = samplers.reconstruct(oracle, torch.stack([a, b]), BETAS, steps=20)
    torch.testing.assert_close(path[[0, -1]], rec)


def test_bad_sampler_arguments():
    _, _, oracle = oracle_setup()
    x = torch.zeros(1, 16)
    with pytest.raises(DdimError, match="eta=-0.1 must be finite and >= 0"):
        samplers.sample(oracle, x, BETAS, steps=10, eta=-0.1)
    with pytest.raises(DdimError, match="variance must be 'small' or 'large', got 'big'"):
        samplers.sample_ddpm(oracle, x, BETAS, steps=10, variance="big")
    with pytest.raises(DdimError, match="steps must be between 1 and T"):
        samplers.sample(oracle, x, BETAS, steps=0)
    with pytest.raises(DdimError, match="2 per-image generators for a batch of 1"):
        samplers.sample(
            oracle, x, BETAS, steps=3, eta=1.0, generator=samplers.generators_from_seeds([1, 2])
        )


# --- DPM-Solver++(2M) --------------------------------------------------------------------------


def hand_dpmpp_2m(seq, x, eps_model, alpha_bar):
    """DPM-Solver++(2M) written as Lu et al. 2022 state it (Algorithm 2), in α_t, σ_t, λ_t."""
    full = [-1, *seq]
    x0_prev = h_prev = None
    for i in range(len(full) - 1, 0, -1):
        s, t = full[i], full[i - 1]
        a_s, a_t = float(alpha_bar[s]), 1.0 if t < 0 else float(alpha_bar[t])
        alpha_s, sigma_s, alpha_t, sigma_t = (math.sqrt(a_s), math.sqrt(1 - a_s),
                                              math.sqrt(a_t), math.sqrt(1 - a_t))
        eps = eps_model(x, torch.full((x.shape[0],), s, dtype=torch.long))
        x0 = (x - sigma_s * eps) / alpha_s  # x_θ, the data prediction
        if t < 0:  # into clean data: λ_t = ∞, e^{−h} = 0, first order
            x = x0
            continue
        h = math.log(alpha_t / sigma_t) - math.log(alpha_s / sigma_s)
        D = x0
        if x0_prev is not None:
            r = h_prev / h
            D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        x = sigma_t / sigma_s * x - alpha_t * (math.exp(-h) - 1) * D
        x0_prev, h_prev = x0, h
    return x


@pytest.mark.parametrize("skip, S", [("uniform", 10), ("quad", 20), ("logsnr", 15)])
def test_dpmpp_2m_is_the_papers_update(skip, S):
    _, _, oracle = oracle_setup()
    x_T = torch.randn(8, 16, generator=torch.Generator().manual_seed(20), dtype=torch.float64)
    out = samplers.sample_dpmpp_2m(oracle, x_T, BETAS, steps=S, skip=skip)
    seq = timesteps(1000, S, skip, betas=BETAS)
    torch.testing.assert_close(out, hand_dpmpp_2m(seq, x_T, oracle, ALPHA_BAR), rtol=1e-10,
                               atol=1e-10)
    assert oracle.calls == 2 * len(seq)  # one network call per timestep, as DDIM


def test_dpmpp_2m_first_and_last_steps_are_ddims():
    _, _, oracle = oracle_setup()
    x_T = torch.randn(4, 16, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    ddim_steps, steps = [], []
    samplers.sample(oracle, x_T, BETAS, steps=10, callback=ddim_steps.append)
    out = samplers.sample_dpmpp_2m(oracle, x_T, BETAS, steps=10, callback=steps.append)
    assert torch.equal(steps[0].x, ddim_steps[0].x)  # no previous prediction: DDIM's step
    assert torch.equal(steps[0].x0_pred, ddim_steps[0].x0_pred)
    assert not torch.allclose(steps[1].x, ddim_steps[1].x)  # the correction is on from step 2
    last = samplers.ddim_plan(BETAS, [timesteps(1000, 10)[0]])[0]  # τ_1 → clean data, η = 0
    eps = oracle(steps[-2].x, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(out, samplers.generalized_step(steps[-2].x, eps, last)[0],
                               rtol=0, atol=0)
    assert torch.equal(out, steps[-1].x0_pred)  # it lands on its own x_0 prediction


@pytest.mark.parametrize("steps, skip", [(10, "uniform"), (20, "quad"), (7, "trailing"),
                                         (12, "logsnr"), ([0, 3, 40, 41, 500, 999], "uniform")])
def test_dpmpp_2m_walks_every_timestep_array_once(steps, skip):
    _, _, oracle = oracle_setup()
    w = torch.ones((), dtype=torch.float64, requires_grad=True)  # a trainable weight
    seen, calls = [], []
    model = lambda x, t: (seen.append(int(t[0])), oracle(x, t) * w)[1]  # noqa: E731
    x_T = torch.randn(2, 16, dtype=torch.float64)
    out = samplers.sample_dpmpp_2m(model, x_T, BETAS, steps=steps, skip=skip,
                                   callback=calls.append)
    seq = timesteps(1000, steps, skip, betas=BETAS)
    assert seen == seq[::-1] and [c.t for c in calls] == seq[::-1]
    assert [c.t_next for c in calls] == [*seq[::-1][1:], -1]
    assert [c.index for c in calls] == list(range(len(seq)))
    assert not out.requires_grad and not any(c.x.requires_grad for c in calls)


def test_dpmpp_2m_clips_predictions_only_when_asked():
    wild = lambda x, t: -5 * torch.ones_like(x)  # noqa: E731  # predicts x_0 far outside [−1, 1]
    x_T = torch.zeros(1, 4, dtype=torch.float64)
    assert samplers.sample_dpmpp_2m(wild, x_T, BETAS, steps=5).abs().max() > 1
    clipped = []
    samplers.sample_dpmpp_2m(wild, x_T, BETAS, steps=5, clip_x0=True, callback=clipped.append)
    assert all(c.x0_pred.abs().max() <= 1 for c in clipped)


# --- the order of DDIM and DPM-Solver++(2M) on the exact probability-flow ODE ------------------

ORDER_STEPS = (10, 20, 40, 80, 160)


def lambda_linear_betas():
    """A schedule whose λ falls linearly in t over the linear schedule's range (λ_0 to λ_999), so
    integer timesteps resolve any λ-even grid: every logsnr grid below has S distinct steps."""
    lam = 0.5 * (ALPHA_BAR.log() - (1 - ALPHA_BAR).log())
    return betas_from_alpha_bars(torch.sigmoid(2 * torch.linspace(float(lam[0]), float(lam[-1]),
                                                                  1000, dtype=torch.float64)))


def errors_at_t0(betas, mean, std, x_T):
    """RMS error at t = 0 of DDIM (η = 0) and of 2M against the exact ODE solution, per S (the
    last step, into clean data, is the same fixed-size step for every S: see `ode_error`)."""
    oracle = GaussianOracle(mean, std, betas)
    errors = {"ddim": [], "2m": []}
    for S in ORDER_STEPS:
        seq = timesteps(1000, S, "logsnr", betas=betas)
        assert seq[0] == 0
        errors["ddim"].append(ode_error(samplers.sample, oracle, betas, x_T, seq))
        errors["2m"].append(ode_error(samplers.sample_dpmpp_2m, oracle, betas, x_T, seq))
    return errors


def fitted_order(errors, first=0):
    """Slope of log error against log S, least squares, from ORDER_STEPS[first] on."""
    return float(np.polyfit(np.log(ORDER_STEPS[first:]), np.log(errors[first:]), 1)[0])


def test_ddim_is_first_order_and_2m_second_order_on_the_exact_ode():
    mean, std = toy_data(16)
    x_T = torch.randn(64, 16, generator=torch.Generator().manual_seed(30), dtype=torch.float64)
    betas = lambda_linear_betas()
    assert all(len(timesteps(1000, S, "logsnr", betas=betas)) == S for S in ORDER_STEPS)
    errors = errors_at_t0(betas, mean, std, x_T)
    assert fitted_order(errors["ddim"]) == pytest.approx(-1, abs=0.2)
    assert fitted_order(errors["2m"]) == pytest.approx(-2, abs=0.3)
    # S = 10 (h = 1.07 in λ) is not yet asymptotic; from S = 20 on the order is 2 to 0.1
    assert fitted_order(errors["2m"], first=1) == pytest.approx(-2, abs=0.1)
    assert errors["ddim"][0] >= 5 * errors["2m"][0]  # S = 10
    assert all(e2 < e1 for e1, e2 in zip(errors["ddim"], errors["2m"]))


def test_integer_timesteps_near_zero_cap_2m_on_the_linear_schedule():
    """With linear β, large-S logsnr grids repeat t = 0, 1, 2, … (λ gaps 0.39, 0.25, …): those
    fixed steps cap 2M's gains at large S, but it still beats DDIM ≥ 5× at S = 10 and at every S."""
    mean, std = toy_data(16)
    x_T = torch.randn(64, 16, generator=torch.Generator().manual_seed(30), dtype=torch.float64)
    errors = errors_at_t0(BETAS, mean, std, x_T)
    assert fitted_order(errors["ddim"]) == pytest.approx(-1, abs=0.2)
    assert errors["ddim"][0] >= 5 * errors["2m"][0]
    assert all(e2 < e1 / 5 for e1, e2 in zip(errors["ddim"], errors["2m"]))
    assert fitted_order(errors["2m"]) < -1.2  # better than first order, short of second
