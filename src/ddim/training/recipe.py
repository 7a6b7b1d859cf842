"""The optimisation recipe, step by step: one `TrainState`, one `train_step`, and the closed-form
schedules it follows (`Schedule`: learning-rate warm-up and decay, EMA decay), and the objective
(`Objective`), each resolved once from the config at a run's head and handed to every step.

One step (DDPM, Ho et al. 2020, Alg. 1): take a batch x_0, draw t uniform on [0, T) and
ε ~ N(0, I) from the run's own generator, take the ε-prediction loss (DDPM eq. 14), clip the
gradient's global norm, take an Adam step at the scheduled learning rate, update the EMA.

Under `torchrun` every rank draws the same global batch of t and ε and keeps its own slice, so N
processes with a global batch G compute the same update as one process with batch G (dropout
aside, which uses each rank's own RNG).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from ddim.config import Config
from ddim.diffusion.loss import simple_loss, training_timesteps
from ddim.network.unet import UNet, reference_init_


@dataclass
class TrainState:
    """Everything a training step changes: the network, its EMA copy, the optimiser, the noise
    generator (t and ε), and the number of steps taken."""

    net: UNet
    ema: UNet
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    images: int = 0  # images the weights have seen, runs they were warm-started from included


@dataclass(frozen=True)
class Schedule:
    """The numbers a run's optimisation follows, resolved once at its head (`from_config`).

    batch_size        global batch (images per step over all processes)
    lr                peak learning rate
    warmup            steps of linear warm-up from 0 (DDPM's reference trainer)
    decay_fraction    the last share of the run over which the rate falls linearly to 0
                      ("warm-up, stable, decay"; 0: flat after the warm-up)
    ema_halflife      EMA half-life in images, or None for the fixed per-step `ema_rate`
    ema_rate          decay per step when no half-life is given
    ema_rampup_ratio  cap on the half-life as a share of the images seen (EDM), or None
    """

    batch_size: int
    lr: float
    warmup: int = 0
    decay_fraction: float = 0.0
    ema_halflife: float | None = None
    ema_rate: float = 0.9999
    ema_rampup_ratio: float | None = None

    @classmethod
    def from_config(cls, config: Config) -> Schedule:
        """The schedule `config.training` (and `model.ema_rate`) describe."""
        t = config.training
        halflife = None if t.ema_halflife_kimg is None else t.ema_halflife_kimg * 1000
        return cls(
            batch_size=t.batch_size,
            lr=t.lr,
            warmup=t.warmup,
            decay_fraction=t.lr_decay_fraction,
            ema_halflife=halflife,
            ema_rate=config.model.ema_rate,
            ema_rampup_ratio=t.ema_rampup_ratio,
        )

    def learning_rate(self, step: int, progress: float = 0.0) -> float:
        """Adam's rate for the update made at `step` (0-based), at `progress` ∈ [0, 1] through the
        run: lr · min(step / warmup, 1) (the reference trainer's first update has rate 0), times
        min(1, (1 − progress) / decay_fraction) once the decay has begun."""
        rate = self.lr * (min(1.0, step / self.warmup) if self.warmup else 1.0)
        if self.decay_fraction > 0:
            rate *= min(1.0, max(0.0, 1.0 - progress) / self.decay_fraction)
        return rate

    def ema_decay(self, images_seen: int) -> float:
        """EMA decay of the update after which the weights have seen `images_seen` images:
        0.5 ^ (batch / half-life), the half-life capped at `ema_rampup_ratio` · images seen so
        that early on the EMA follows the young network instead of its initial weights (EDM,
        Karras et al. 2022); without a half-life and ramp-up, the fixed `ema_rate`."""
        rate, halflife = self.ema_rate, self.ema_halflife
        if halflife is None and self.ema_rampup_ratio is None:
            return rate
        if halflife is None:
            if not 0 < rate < 1:
                return rate  # 0 copies the network, 1 never moves: no half-life to ramp up
            halflife = self.batch_size * math.log(0.5) / math.log(rate)
        if self.ema_rampup_ratio is not None:
            halflife = min(halflife, self.ema_rampup_ratio * images_seen)
        return 0.5 ** (self.batch_size / max(halflife, 1e-8))


def run_progress(step: int, n_iters: int, elapsed: float = 0.0,
                 time_budget: float | None = None) -> float:  # fmt: skip
    """How far through its run the update at `step` is (the `progress` of `learning_rate`):
    step / n_iters, or for a run with a time budget elapsed / time_budget, whichever is further."""
    progress = step / n_iters
    if time_budget is not None:
        progress = max(progress, elapsed / time_budget)
    return progress


@dataclass(frozen=True)
class Objective:
    """What one step minimises: DDPM's ε-loss over T timesteps (`ddim.diffusion.loss`), with the
    reduction, per-t weighting and timestep pairing the config chose, and gradient clipping."""

    num_timesteps: int
    reduction: str = "mean"
    weighting: str = "simple"
    gamma: float = 5.0
    antithetic: bool = False
    grad_clip: float | None = 1.0

    @classmethod
    def from_config(cls, config: Config) -> Objective:
        """The objective `config` describes."""
        t = config.training
        return cls(
            num_timesteps=config.diffusion.num_diffusion_timesteps,
            reduction=t.loss,
            weighting=t.loss_weighting,
            gamma=t.loss_gamma,
            antithetic=t.antithetic,
            grad_clip=t.grad_clip,
        )


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·net, for all parameters in one fused call."""
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in net.parameters()], 1 - decay)


def make_optimizer(config: Config, net: torch.nn.Module, device: torch.device):
    """Adam as configured; the fused kernel on CUDA."""
    t = config.training
    return torch.optim.Adam(
        net.parameters(),
        lr=t.lr,
        betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_eps,
        weight_decay=t.weight_decay,
        fused=device.type == "cuda",
    )


def init_training(
    config: Config, device: torch.device, *, channels_last: bool = False
) -> TrainState:
    """The state at step 0: weights, dropout and the noise generator seeded by `training.seed`;
    `channels_last` stores the network's weights NHWC (faster convolutions, same results)."""
    torch.manual_seed(config.training.seed)  # initial weights and dropout follow the seed
    net = UNet.from_config(config.model, config.data.image_size)
    if config.training.init == "reference":
        reference_init_(net)
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = make_optimizer(config, net, device)
    generator = torch.Generator(device=device).manual_seed(config.training.seed)
    return TrainState(net, ema, optimizer, generator)


def train_step(
    state: TrainState,
    x_0: torch.Tensor,
    alpha_bar: torch.Tensor,
    *,
    objective: Objective,
    schedule: Schedule,
    progress: float = 0.0,
    model: torch.nn.Module | None = None,
    amp: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """One optimisation step on this rank's batch `x_0` ([-1, 1]); returns the (device) loss
    without synchronising. `model` is the network as called (DDP- or compile-wrapped `state.net`),
    `alpha_bar` the float32 ᾱ table on the device, `progress` how far through the run this step
    is (for the rate's decay), `amp` bf16 autocast for the forward pass."""
    local = x_0.shape[0]
    # every rank draws the global batch's t and ε and keeps its slice (see the module docstring)
    t = training_timesteps(
        local * world_size,
        objective.num_timesteps,
        generator=state.generator,
        device=x_0.device,
        antithetic=objective.antithetic,
    )[rank * local : (rank + 1) * local]
    noise = torch.randn(
        (local * world_size, *x_0.shape[1:]), generator=state.generator, device=x_0.device
    )[rank * local : (rank + 1) * local]
    for group in state.optimizer.param_groups:
        group["lr"] = schedule.learning_rate(state.step, progress)
    with torch.autocast(x_0.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = simple_loss(
            state.net if model is None else model, x_0, t, noise, alpha_bar,
            reduction=objective.reduction, weighting=objective.weighting, gamma=objective.gamma,
        )
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if objective.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(state.net.parameters(), objective.grad_clip, foreach=True)
    state.optimizer.step()
    state.images += local * world_size
    ema_update(state.ema, state.net, schedule.ema_decay(state.images))
    state.step += 1
    return loss.detach()


def compiled_gradient_errors(
    state: TrainState,
    model: torch.nn.Module,
    x_0: torch.Tensor,
    alpha_bar: torch.Tensor,
    objective: Objective,
    *,
    amp: bool,
) -> list[str]:
    """The parameters whose gradient `model` (the network as compiled) gets wrong: all zero where
    the eager network's is not, on the same images, t and ε. torch.compile has been seen to drop
    the gradient behind a padded stride-2 convolution under bf16 autocast on the CPU, training only
    the layers before it; this catches that class of fault before a run spends hours on it."""
    generator = torch.Generator(device=x_0.device).manual_seed(0)
    t = training_timesteps(len(x_0), objective.num_timesteps, generator=generator,
                           device=x_0.device)  # fmt: skip
    noise = torch.randn(x_0.shape, generator=generator, device=x_0.device)
    grads = []
    for network in (state.net, model):
        state.net.zero_grad(set_to_none=True)
        with torch.autocast(x_0.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = simple_loss(network, x_0, t, noise, alpha_bar, reduction=objective.reduction,
                               weighting=objective.weighting, gamma=objective.gamma)  # fmt: skip
        loss.backward()
        grads.append({name: None if p.grad is None else bool(p.grad.any())
                      for name, p in state.net.named_parameters()})  # fmt: skip
    state.net.zero_grad(set_to_none=True)
    eager, compiled = grads
    return [name for name, flows in eager.items() if flows and not compiled[name]]
