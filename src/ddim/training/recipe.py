"""The optimisation recipe, step by step: one `TrainState`, one `train_step`, and the closed-form
schedules it follows (learning-rate warm-up, EMA decay).

One step (DDPM, Ho et al. 2020, Alg. 1): take a batch x_0, draw t uniform on [0, T) and
ε ~ N(0, I) from the run's own generator, take the ε-prediction loss (DDPM eq. 14), clip the
gradient's global norm, take an Adam step with linear learning-rate warm-up, update the EMA.

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


def learning_rate(config: Config, step: int) -> float:
    """Adam's learning rate for the update made at `step` (0-based): lr · min(step / warmup, 1),
    the DDPM reference trainer's warm-up (its first update has learning rate 0), then flat."""
    warmup = config.training.warmup
    return config.training.lr * (min(1.0, step / warmup) if warmup else 1.0)


def ema_decay(config: Config, step: int = 0, images_seen: int | None = None) -> float:
    """EMA decay for the update made at `step` (0-based), after which the weights have seen
    `images_seen` images (default (step + 1) · batch; more for a warm-started run).

    The base half-life is `training.ema_halflife_kimg` thousand images, or the one that
    `model.ema_rate` per step implies. With `training.ema_rampup_ratio` r (EDM, Karras et al.
    2022), the half-life is at most r times the images seen so far, so that early on the EMA
    follows the young network instead of averaging in the initial weights:
    decay = 0.5 ^ (batch / min(half-life, r · images seen)).
    """
    if images_seen is None:
        images_seen = (step + 1) * config.training.batch_size
    t = config.training
    rate = config.model.ema_rate
    if t.ema_halflife_kimg is None and t.ema_rampup_ratio is None:
        return rate
    if t.ema_halflife_kimg is not None:
        halflife = t.ema_halflife_kimg * 1000
    elif 0 < rate < 1:
        halflife = t.batch_size * math.log(0.5) / math.log(rate)
    else:
        return rate  # 0 copies the network, 1 never moves: no half-life to ramp up
    if t.ema_rampup_ratio is not None:
        halflife = min(halflife, t.ema_rampup_ratio * images_seen)
    return 0.5 ** (t.batch_size / max(halflife, 1e-8))


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
    config: Config,
    state: TrainState,
    x_0: torch.Tensor,
    alpha_bar: torch.Tensor,
    *,
    model: torch.nn.Module | None = None,
    amp: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """One optimisation step on this rank's batch `x_0` ([-1, 1]); returns the (device) loss
    without synchronising. `model` is the network as called (DDP- or compile-wrapped `state.net`),
    `alpha_bar` the float32 ᾱ table on the device, `amp` bf16 autocast for the forward pass."""
    local = x_0.shape[0]
    T = config.diffusion.num_diffusion_timesteps
    # every rank draws the global batch's t and ε and keeps its slice (see the module docstring)
    t = training_timesteps(
        local * world_size,
        T,
        generator=state.generator,
        device=x_0.device,
        antithetic=config.training.antithetic,
    )[rank * local : (rank + 1) * local]
    noise = torch.randn(
        (local * world_size, *x_0.shape[1:]), generator=state.generator, device=x_0.device
    )[rank * local : (rank + 1) * local]
    for group in state.optimizer.param_groups:
        group["lr"] = learning_rate(config, state.step)
    with torch.autocast(x_0.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = simple_loss(
            state.net if model is None else model, x_0, t, noise, alpha_bar,
            reduction=config.training.loss,
            weighting=config.training.loss_weighting, gamma=config.training.loss_gamma,
        )
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.training.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(
            state.net.parameters(), config.training.grad_clip, foreach=True
        )
    state.optimizer.step()
    state.images += local * world_size
    ema_update(state.ema, state.net, ema_decay(config, state.step, state.images))
    state.step += 1
    return loss.detach()
