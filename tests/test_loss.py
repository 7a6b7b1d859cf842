import pytest
import torch

from ddim.diffusion.loss import q_sample, simple_loss, training_timesteps
from ddim.diffusion.oracle import GaussianOracle, toy_data
from ddim.diffusion.schedule import alpha_bars, make_betas

BETAS = make_betas("linear", 1000)
ALPHA_BAR = alpha_bars(BETAS)


def test_q_sample_is_ddpm_eq_4():
    x_0, noise = torch.randn(2, 3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 999, 500])
    a = ALPHA_BAR[t].view(3, 1, 1, 1)
    torch.testing.assert_close(
        q_sample(x_0, t, noise, ALPHA_BAR), a.sqrt() * x_0 + (1 - a).sqrt() * noise
    )


@pytest.mark.parametrize("t", [10, 300, 900])
def test_optimal_predictor_reaches_the_bayes_loss(t):
    """For Gaussian data the minimal L_simple at t is mean_d ᾱ s_d² / (ᾱ s_d² + 1 − ᾱ)."""
    mean, std = toy_data(8)
    oracle = GaussianOracle(mean, std, BETAS)
    g = torch.Generator().manual_seed(t)
    n = 100_000
    x_0 = mean + std * torch.randn(n, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 8, generator=g, dtype=torch.float64)
    ts = torch.full((n,), t)
    a = ALPHA_BAR[t]
    bayes = (a * std**2 / (a * std**2 + 1 - a)).mean()
    loss = simple_loss(oracle, x_0, ts, noise, ALPHA_BAR)
    assert loss.item() == pytest.approx(bayes.item(), rel=0.02, abs=2e-4)
    zero = simple_loss(lambda x, t: torch.zeros_like(x), x_0, ts, noise, ALPHA_BAR)
    assert zero.item() == pytest.approx(1.0, abs=0.01)


def test_sum_reduction_is_mean_times_pixels():
    x_0, noise = torch.randn(2, 4, 3, 8, 8)
    t = torch.randint(0, 1000, (4,))
    model = lambda x, t: 0.5 * x  # noqa: E731
    mean = simple_loss(model, x_0, t, noise, ALPHA_BAR, reduction="mean")
    total = simple_loss(model, x_0, t, noise, ALPHA_BAR, reduction="sum")
    torch.testing.assert_close(total, mean * 3 * 8 * 8)


def test_training_timesteps():
    g = torch.Generator().manual_seed(0)
    t = training_timesteps(10_000, 1000, generator=g)
    assert t.min() >= 0 and t.max() <= 999 and t.unique().numel() > 990
    pairs = training_timesteps(8, 1000, generator=g, antithetic=True)
    assert pairs.shape == (8,)
    # the official layout: [t_0..t_4, 999 − t_0, 999 − t_1, 999 − t_2]
    torch.testing.assert_close(pairs[:3] + pairs[5:8], torch.full((3,), 999))


def test_loss_weights_closed_forms():
    from ddim.diffusion.loss import loss_weights

    alpha_bar = torch.tensor([0.99, 0.5, 0.1, 0.001], dtype=torch.float64)
    sigma2 = (1 - alpha_bar) / alpha_bar  # 1/SNR
    assert torch.equal(loss_weights(alpha_bar, "simple"), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(loss_weights(alpha_bar, "min_snr", 5.0),
                               torch.minimum(5.0 * sigma2, torch.tensor(1.0, dtype=torch.float64)))
    torch.testing.assert_close(loss_weights(alpha_bar, "x0_truncated", 100.0),
                               sigma2.clamp(1.0, 100.0))
    assert loss_weights(alpha_bar, "x0_truncated", 100.0)[-1] == 100.0  # σ² = 999, clipped


def test_weighted_loss_weights_each_image_by_its_t():
    from ddim.diffusion.loss import loss_weights

    betas = make_betas("linear", 1000)
    alpha_bar = alpha_bars(betas).float()
    x_0 = torch.zeros(2, 3, 4, 4)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 990])

    def zero(x, t):  # predicts ε = 0: each image's error is its noise
        return torch.zeros_like(x)

    per_image = noise.square().mean(dim=(1, 2, 3))
    w = loss_weights(alpha_bar[t], "x0_truncated", 50.0)
    got = simple_loss(zero, x_0, t, noise, alpha_bar, weighting="x0_truncated", gamma=50.0)
    torch.testing.assert_close(got, (w * per_image).mean())
    torch.testing.assert_close(simple_loss(zero, x_0, t, noise, alpha_bar), per_image.mean())
