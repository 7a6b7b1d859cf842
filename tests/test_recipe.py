"""ddim.training.recipe: the learning-rate and EMA schedules against their closed forms, and one
train_step against the same update written out by hand."""

import math

import pytest
import torch

from ddim.config import apply_overrides, load_config
from ddim.diffusion.schedule import alpha_bars
from ddim.training import (
    Objective,
    Schedule,
    TrainState,
    ema_update,
    init_training,
    train_step,
)


def config(*overrides):
    return apply_overrides(load_config("tiny"), list(overrides))


def learning_rate(c, step, progress=0.0):
    return Schedule.from_config(c).learning_rate(step, progress)


def ema_decay(c, step):
    """The decay of the update at `step` of a fresh run (it has then seen (step + 1) batches)."""
    return Schedule.from_config(c).ema_decay((step + 1) * c.training.batch_size)


def test_learning_rate_warms_up_linearly_then_stays_flat():
    c = config("training.lr=3e-4", "training.warmup=100")
    assert learning_rate(c, 0) == 0.0  # the reference trainer's first update has rate 0
    assert learning_rate(c, 25) == pytest.approx(3e-4 * 25 / 100, rel=1e-12)
    assert learning_rate(c, 99) == pytest.approx(3e-4 * 0.99, rel=1e-12)
    assert learning_rate(c, 100) == learning_rate(c, 10**6) == 3e-4
    assert learning_rate(c, 10**6, progress=0.99) == 3e-4  # no decay unless asked
    assert learning_rate(config("training.lr=1e-3", "training.warmup=0"), 0) == 1e-3


def test_learning_rate_decays_linearly_to_zero_over_the_last_share_of_the_run():
    """Warm-up, stable, decay: flat until 1 − f of the run, then a straight line to 0."""
    c = config("training.lr=1e-3", "training.warmup=10", "training.lr_decay_fraction=0.25")
    assert learning_rate(c, 5, progress=0.0) == pytest.approx(5e-4, rel=1e-12)
    assert learning_rate(c, 500, progress=0.5) == learning_rate(c, 500, progress=0.75) == 1e-3
    for p in (0.8, 0.9, 0.99):
        assert learning_rate(c, 500, progress=p) == pytest.approx(1e-3 * (1 - p) / 0.25)
    assert learning_rate(c, 500, progress=1.0) == 0.0
    assert learning_rate(c, 500, progress=1.5) == 0.0  # past the end: never negative
    # warm-up and decay multiply: a run shorter than its warm-up still ends at 0
    assert learning_rate(c, 5, progress=0.9) == pytest.approx(5e-4 * 0.1 / 0.25)


def test_ema_decay_is_the_rate_or_the_half_life():
    assert ema_decay(config("model.ema_rate=0.999"), 5) == 0.999
    c = config("training.batch_size=64", "training.ema_halflife_kimg=10")
    decay = ema_decay(c, 7)
    assert decay == pytest.approx(0.5 ** (64 / 10_000), rel=1e-12)
    # after half-life / batch steps, the old weights' share has halved
    assert decay ** (10_000 / 64) == pytest.approx(0.5, rel=1e-9)


def test_ema_rampup_caps_the_half_life_at_a_fraction_of_the_images_seen():
    c = config("training.batch_size=32", "training.ema_halflife_kimg=50",
               "training.ema_rampup_ratio=0.05")  # fmt: skip
    for step in (0, 10, 1000, 100_000):
        seen = (step + 1) * 32
        halflife = min(50_000, 0.05 * seen)
        assert ema_decay(c, step) == pytest.approx(0.5 ** (32 / halflife), rel=1e-12)
    assert ema_decay(c, 0) < 1e-5  # the first update nearly copies the network
    assert ema_decay(c, 100_000) == pytest.approx(0.5 ** (32 / 50_000), rel=1e-12)
    # without a half-life in kimg, ema_rate's own half-life is the cap
    rate = config("model.ema_rate=0.999", "training.batch_size=32", "training.ema_rampup_ratio=0.1")
    assert ema_decay(rate, 10**7) == pytest.approx(0.999, rel=1e-9)
    assert ema_decay(rate, 0) == pytest.approx(0.5 ** (32 / 3.2), rel=1e-12)


def test_ema_update_is_a_lerp():
    net, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, net, 0.9)
    for old, new, target in zip(before, ema.parameters(), net.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * target.detach())


def test_train_step_is_adam_on_the_simple_loss_then_ema():
    """One step equals the same update written out: q_sample, ε-MSE, clip, Adam, lerp."""
    c = config("model.ch=32", "model.ch_mult=[1]", "model.attn_resolutions=[]",
               "data.image_size=8", "training.batch_size=4", "training.warmup=0",
               "training.lr=1e-3", "model.ema_rate=0.5", "training.grad_clip=1e9",
               "training.loss_weighting=simple")  # fmt: skip
    state: TrainState = init_training(c, torch.device("cpu"))
    net0 = {k: v.clone() for k, v in state.net.state_dict().items()}
    x_0 = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    alpha_bar = alpha_bars(c.diffusion.betas()).float()
    generator = torch.Generator().manual_seed(c.training.seed)  # the state's own stream
    t = torch.randint(0, 1000, (4,), generator=generator)
    noise = torch.randn(x_0.shape, generator=generator)
    loss = train_step(state, x_0, alpha_bar, objective=Objective.from_config(c),
                      schedule=Schedule.from_config(c))
    a = alpha_bar[t].view(-1, 1, 1, 1)
    reference = init_training(c, torch.device("cpu"))
    out = reference.net(a.sqrt() * x_0 + (1 - a).sqrt() * noise, t)
    expected = (noise - out).square().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    expected.backward()
    reference.optimizer.step()
    for (key, p), q in zip(state.net.named_parameters(), reference.net.parameters()):
        torch.testing.assert_close(p, q, msg=key)
        ema = state.ema.state_dict()[key]
        torch.testing.assert_close(ema, 0.5 * net0[key] + 0.5 * p.detach())
    assert state.step == 1 and math.isfinite(loss.item())


def test_train_step_runs_a_wrapped_model_that_has_no_truth_value():
    """torch.compile's wrapper raises on len(): the step must not test the model for truth."""
    c = config("model.ch=32", "model.ch_mult=[1]", "model.attn_resolutions=[]",
               "data.image_size=8", "training.batch_size=2")  # fmt: skip
    state = init_training(c, torch.device("cpu"))

    class Wrapped(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, t):
            return self.net(x, t)

        def __len__(self):
            raise TypeError("no len()")

    alpha_bar = alpha_bars(c.diffusion.betas()).float()
    loss = train_step(state, torch.zeros(2, 3, 8, 8), alpha_bar, model=Wrapped(state.net),
                      objective=Objective.from_config(c), schedule=Schedule.from_config(c))
    assert math.isfinite(loss.item()) and state.step == 1


def test_run_progress_is_the_further_of_steps_and_time():
    from ddim.training.recipe import run_progress

    assert run_progress(25, 100) == 0.25
    assert run_progress(25, 100, elapsed=60.0, time_budget=120.0) == 0.5
    assert run_progress(75, 100, elapsed=60.0, time_budget=120.0) == 0.75
    assert run_progress(75, 100, elapsed=1e9) == 0.75  # no budget: time does not count
