"""The forward process q(x_t | x_0) and the DDPM training objective on ε-prediction.

DDPM (Ho et al. 2020): x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε, ε ~ N(0, I)  (eq. 4), and the simple loss
L_simple = E_{t, x_0, ε} ‖ε − ε_θ(x_t, t)‖²  (eq. 14), with t uniform on [0, T).
"""

from __future__ import annotations

import torch

from ddim.diffusion.eps_model import EpsModel


def q_sample(
    x_0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) in closed form (DDPM eq. 4) for a batch of timesteps t."""
    a = alpha_bar.to(x_0.device, x_0.dtype)[t].view(-1, *([1] * (x_0.dim() - 1)))
    return a.sqrt() * x_0 + (1 - a).sqrt() * noise


def training_timesteps(
    batch_size: int,
    num_timesteps: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    antithetic: bool = False,
) -> torch.Tensor:
    """t ~ Uniform{0..T−1} per image; `antithetic` pairs t with T−1−t (official DDIM trainer)."""
    if not antithetic:
        return torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=device)
    half = torch.randint(
        0, num_timesteps, (batch_size // 2 + 1,), generator=generator, device=device
    )
    return torch.cat([half, num_timesteps - 1 - half])[:batch_size]


def simple_loss(
    eps_model: EpsModel,
    x_0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    alpha_bar: torch.Tensor,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """L_simple (DDPM eq. 14): ‖ε − ε_θ(x_t, t)‖², averaged over pixels and batch (`mean`, the
    DDPM reference trainer) or summed over pixels and averaged over the batch (`sum`, the official
    DDIM trainer)."""
    x_t = q_sample(x_0, t, noise, alpha_bar)
    squared_error = (noise - eps_model(x_t, t).float()).square()
    if reduction == "mean":
        return squared_error.mean()
    if reduction == "sum":
        return squared_error.flatten(1).sum(dim=1).mean()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
