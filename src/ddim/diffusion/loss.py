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


def loss_weights(alpha_bar_t: torch.Tensor, kind: str = "simple", gamma: float = 5.0):
    """w(t) of the weighted ε-loss E[w(t) ‖ε − ε_θ(x_t, t)‖²], from ᾱ_t; σ_t² = (1 − ᾱ_t)/ᾱ_t.

    simple        1: DDPM's L_simple (eq. 14)
    min_snr       min(1, γ σ_t²) = min(SNR_t, γ)/SNR_t (Hang et al. 2023, for ε-prediction):
                  the easy low-noise steps weigh less
    x0_truncated  min(max(σ_t², 1), γ): the x_0 error ‖x_0 − x̂_0‖² = σ_t² ‖ε − ε̂‖², which is
                  what a deterministic sampler's output inherits from each step, clipped to [1, γ]
    """
    sigma2 = (1 - alpha_bar_t) / alpha_bar_t
    if kind == "simple":
        return torch.ones_like(alpha_bar_t)
    if kind == "min_snr":
        return torch.clamp(gamma * sigma2, max=1.0)
    if kind == "x0_truncated":
        return torch.clamp(sigma2, min=1.0, max=gamma)
    raise ValueError(f"unknown loss weighting {kind!r}")


def simple_loss(
    eps_model: EpsModel,
    x_0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    alpha_bar: torch.Tensor,
    *,
    reduction: str = "mean",
    weighting: str = "simple",
    gamma: float = 5.0,
) -> torch.Tensor:
    """L_simple (DDPM eq. 14): ‖ε − ε_θ(x_t, t)‖², averaged over pixels and batch (`mean`, the
    DDPM reference trainer) or summed over pixels and averaged over the batch (`sum`, the official
    DDIM trainer); each image's error weighted by `loss_weights(ᾱ_t, weighting, gamma)`."""
    x_t = q_sample(x_0, t, noise, alpha_bar)
    squared_error = (noise - eps_model(x_t, t).float()).square()
    if weighting != "simple":
        weights = loss_weights(alpha_bar.to(x_0.device, torch.float32)[t], weighting, gamma)
        squared_error = squared_error * weights.view(-1, *([1] * (x_0.dim() - 1)))
    if reduction == "mean":
        return squared_error.mean()
    if reduction == "sum":
        return squared_error.flatten(1).sum(dim=1).mean()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
