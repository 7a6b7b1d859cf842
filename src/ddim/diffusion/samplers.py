"""DDIM and DDPM samplers, DDIM encoding, and latent interpolation, as free functions.

Notation (DDIM paper, Song, Meng & Ermon 2021; its α_t is DDPM's ᾱ_t):

    code            paper
    alpha_bar_t     α_τi      ᾱ at the step's start
    alpha_bar_next  α_τi−1    ᾱ at the step's end (1 for "t = −1", clean data)
    eps             ε_θ(x_τi, τi)
    x0_pred         "predicted x_0", eq. 12, first term
    sigma           σ_τi(η), eq. 16
    eta             η: 0 = deterministic DDIM, 1 = DDPM-equivalent

Every sampler is one walk over adjacent pairs of one explicit timestep array (−1, τ_1, …, τ_S):
a *plan* lists, for each step, both endpoints and the σ's; `walk` applies a step function to each
pair, eq. 12 (`generalized_step`) unless told otherwise. Sampling walks the pairs downward;
encoding walks the same pairs upward with the endpoints swapped and σ = 0 (eqs. 13/14,
`reverse_plan`). No step re-derives its neighbour by arithmetic.

Adding a solver: write its step as a free function with `generalized_step`'s signature beside it
(a multistep solver reads `previous`, the step before and the x_0 it predicted, as
`dpmpp_2m_step` does), and give it an entry in `ddim.sampling.settings.SAMPLERS`, where the
commands build their plans.

The plan is computed once in float64 on the host and holds Python floats, so the loop makes no
host-device copies and no host syncs; intermediates stay on the device.

Randomness comes only from the `generator` argument: a `torch.Generator`, or a list of them, one per
image (see `generators_from_seeds`), which makes image k the same at any batch size.

What the public functions take: x_T and x_0 as tensors or NumPy arrays of floats, returned in the
dtype they came in; float16 and bfloat16 are computed in float32 (with 10 and 7 bits of
mantissa they would round away a step's small updates), float32 and float64 in their own dtype,
which the network receives (a network that fails on it is a DdimError naming the argument).
Betas as a tensor, an array or a list (`ddim.diffusion.schedule.as_betas`); S as any library's
integer (`ddim.timesteps`).

DPM-Solver++(2M) (Lu et al. 2022) walks the same pairs: DDIM at η = 0 is its first-order step (the
exponential integrator of the probability-flow ODE in λ = log(√ᾱ/√(1 − ᾱ)), data-prediction form),
and the second-order multistep step adds one correction built from the previous step's x0_pred, so
it costs no extra network call:

    code            DPM-Solver++
    lam             λ_t = log(α_t/σ_t), with α_t = √ᾱ_t and σ_t = √(1 − ᾱ_t)
    h               h_i = λ_ti − λ_ti−1, the step in λ (∞ for the last step, to clean data)
    r               r_i = h_i−1 / h_i
    x0_pred         x_θ(x̃_ti−1, t_i−1), the data prediction
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ddim.diffusion.eps_model import EpsModel
from ddim.diffusion.schedule import alpha_bar_at, alpha_bars, as_betas, half_log_snr, timesteps
from ddim.errors import DdimError
from ddim.scalars import as_float, as_int

Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True)
class PlanStep:
    """One step of a walk: from timestep `t_from` to `t_to`, the network evaluated at `t_model`."""

    t_from: int
    t_to: int
    t_model: int
    alpha_bar_from: float
    alpha_bar_to: float
    sigma: float = 0.0  # σ in the direction term √(1 − ᾱ_to − σ²)·ε of eq. 12
    noise_sigma: float = (
        0.0  # standard deviation of the fresh noise added (= sigma, except DDPM "large")
    )


@dataclass(frozen=True)
class Previous:
    """What a step function sees of the step before it: that step and the x_0 it predicted."""

    step: PlanStep
    x0_pred: torch.Tensor


# The step a walk applies to each pair of its plan:
#     update(x_t, eps, step, noise, *, clip_x0, previous) -> (x_to, x0_pred)
# `generalized_step` (eq. 12) is the one every sampler here uses.
StepFunction = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Step:
    """What a walk yields after each step: the new x and the x_0 predicted on the way."""

    index: int
    t: int
    t_next: int
    x: torch.Tensor
    x0_pred: torch.Tensor


# --- the update --------------------------------------------------------------------------------


def check_eta(eta: float, name: str = "eta") -> float:
    """η of eq. 16 as a float (NumPy and PyTorch scalars too); outside [0, 1000] a DdimError.

    η = 0 is DDIM, η = 1 DDPM's posterior; η > 1 is allowed (the direction term is then 0), up to
    1000: σ ≤ η (σ(η = 1) ≤ 1), so σ² and the noise σ·z stay finite in float32 at every step, where
    a large finite η (1e200) would overflow σ² and turn every image into NaN.
    """
    value = as_float(eta, name, finite=False)
    if not 0 <= value <= 1000:
        raise DdimError(f"{name}={eta!r} must be finite and >= 0, at most 1000", argument=name)
    return value


def ddim_sigma(alpha_bar_t: float, alpha_bar_next: float, eta: float) -> float:
    """σ_τi(η) = η · √((1 − α_τi−1)/(1 − α_τi)) · √(1 − α_τi/α_τi−1)  (DDIM eq. 16)."""
    return eta * math.sqrt(
        (1 - alpha_bar_next) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_next)
    )


def generalized_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    step: PlanStep,
    noise: torch.Tensor | None = None,
    *,
    clip_x0: bool = False,
    previous: Previous | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of DDIM eq. 12 from ᾱ_from to ᾱ_to; returns (x_to, x0_pred).

    With ᾱ_to > ᾱ_from (encoding, σ = 0) the same formula is the Euler step of eq. 14 run upward.
    `clip_x0` clamps x0_pred to [−1, 1] and re-derives ε from it, which turns eq. 12 at η = 1 into
    the DDPM posterior mean with a clipped x_0 (the official `ddpm_noisy` path). Eq. 12 is a
    one-step method: `previous` (what multistep solvers read) is not used.
    """
    a_from, a_to = step.alpha_bar_from, step.alpha_bar_to
    eps = eps.to(x_t.dtype)
    # "predicted x_0" (eq. 12, first term; eq. 9)
    x0_pred = (x_t - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
    if clip_x0:
        x0_pred = x0_pred.clamp(-1, 1)
        eps = (x_t - math.sqrt(a_from) * x0_pred) / math.sqrt(1 - a_from)
    # "direction pointing to x_t" (eq. 12, second term); σ > √(1 − ᾱ_to) only when η > 1
    direction = math.sqrt(max(1 - a_to - step.sigma**2, 0.0))
    x_to = math.sqrt(a_to) * x0_pred + direction * eps
    # "random noise" (eq. 12, third term)
    if noise is not None and step.noise_sigma > 0:
        x_to = x_to + step.noise_sigma * noise
    return x_to, x0_pred


# --- plans: which pairs to walk, with which σ --------------------------------------------------


def _pairs(betas: torch.Tensor, seq: Sequence[int]) -> list[tuple[int, int, float, float]]:
    """(τ_i, τ_i−1, α_τi, α_τi−1) for i = S..1, top first, with τ_0 = −1 (clean data)."""
    alpha_bar = alpha_bars(betas)
    full = [-1, *seq]
    return [
        (
            full[i],
            full[i - 1],
            alpha_bar_at(alpha_bar, full[i]),
            alpha_bar_at(alpha_bar, full[i - 1]),
        )
        for i in range(len(full) - 1, 0, -1)
    ]


def ddim_plan(betas: torch.Tensor, seq: Sequence[int], eta: float = 0.0) -> list[PlanStep]:
    """Steps of the generalized sampler (eq. 12) over τ = `seq`, with σ_τi(η) from eq. 16."""
    eta = check_eta(eta)
    steps = []
    for t, s, a_t, a_s in _pairs(betas, seq):
        sigma = ddim_sigma(a_t, a_s, eta)
        steps.append(PlanStep(t, s, t, a_t, a_s, sigma=sigma, noise_sigma=sigma))
    return steps


def ddpm_plan(betas: torch.Tensor, seq: Sequence[int], variance: str = "small") -> list[PlanStep]:
    """Steps of DDPM ancestral sampling over τ: posterior mean, variance β̃ ("small") or β ("large").

    On a sub-sequence the step's β is 1 − α_τi/α_τi−1. "small" is σ_τi(η = 1) of eq. 16, the
    posterior variance β̃; "large" is the paper's σ̂_τi = √(1 − α_τi/α_τi−1). The final step adds
    no noise (the official code masks it at t = 0).
    """
    if variance not in ("small", "large"):
        raise DdimError(f"variance must be 'small' or 'large', got {variance!r}",
                        argument="variance")
    steps = []
    for t, s, a_t, a_s in _pairs(betas, seq):
        sigma = ddim_sigma(a_t, a_s, 1.0)
        large = math.sqrt(1 - a_t / a_s) if s >= 0 else 0.0
        noise_sigma = sigma if variance == "small" else large
        steps.append(PlanStep(t, s, t, a_t, a_s, sigma=sigma, noise_sigma=noise_sigma))
    return steps


def encode_plan(betas: torch.Tensor, seq: Sequence[int]) -> list[PlanStep]:
    """The deterministic sampler's pairs over τ = `seq` walked upward (DDIM eqs. 13/14)."""
    return reverse_plan(ddim_plan(betas, seq, 0.0))


def reverse_plan(plan: Sequence[PlanStep]) -> list[PlanStep]:
    """A downward plan's pairs walked upward, endpoints swapped and σ = 0 (DDIM eqs. 13/14).

    The network sees the current point x_τi−1 with the label of the pair's upper end τ_i, as it
    does in the downward walk: the network is not defined at t = −1, and the labels match the
    sampler's, so encoding and decoding each make S calls at the same timesteps.
    """
    return [
        PlanStep(s.t_to, s.t_from, s.t_model, s.alpha_bar_to, s.alpha_bar_from)
        for s in reversed(plan)
    ]


# --- randomness --------------------------------------------------------------------------------


MAX_SEED = 2**63 - 1  # seeds are stored as int64, as the config's and the command line's


def generators_from_seeds(seeds: Sequence[int], device: torch.device | str = "cpu") -> list:
    """One `torch.Generator` per image, so image k depends on seeds[k] alone; each seed is an
    integer of any library in [0, 2^63 - 1], else a DdimError naming `seeds`."""
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise DdimError(f"seeds must be a sequence of integers, got {seeds!r}", argument="seeds")
    generators = []
    for k, seed in enumerate(seeds):
        try:
            seed = as_int(seed, f"seeds[{k}]")
        except DdimError as error:
            raise DdimError(str(error), argument="seeds") from None
        if not 0 <= seed <= MAX_SEED:
            raise DdimError(f"seeds[{k}]={seed} must lie in [0, 2^63 - 1]", argument="seeds")
        generators.append(torch.Generator(device=device).manual_seed(seed))
    return generators


def randn(
    shape: Sequence[int], generator: Generator, *, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Standard normal noise drawn from one generator, or per image from a list of generators."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise DdimError(f"generator holds {len(generator)} per-image generators for a batch of "
                        f"{shape[0]}", argument="generator")
    return torch.stack(
        [torch.randn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in generator]
    )


# --- the walk ----------------------------------------------------------------------------------


def walk(
    eps_model: EpsModel,
    x: torch.Tensor,
    plan: Sequence[PlanStep],
    *,
    generator: Generator = None,
    clip_x0: bool = False,
    update: StepFunction = generalized_step,
    name: str = "x",
) -> Iterator[Step]:
    """Apply `update` (eq. 12) along `plan`, yielding each step's x and x0_pred (on the device,
    not copied).

    No autograd graph is kept, whatever the model: each step runs under `torch.no_grad()`, so a
    network with trainable weights holds one step's activations at a time, not all S steps'.
    A network that fails on its first call with x of a dtype other than float32 is a DdimError
    naming the argument `name` that x came from.
    """
    x, previous = x.detach(), None
    for index, step in enumerate(plan):
        with torch.no_grad():
            t = torch.full((x.shape[0],), step.t_model, device=x.device, dtype=torch.long)
            eps = eps_model(x, t) if index else _first_call(eps_model, x, t, name)
            noise = None
            if step.noise_sigma > 0:
                noise = randn(x.shape, generator, device=x.device, dtype=x.dtype)
            x, x0_pred = update(x, eps, step, noise, clip_x0=clip_x0, previous=previous)
        previous = Previous(step, x0_pred)
        yield Step(index, step.t_from, step.t_to, x, x0_pred)


def _first_call(eps_model: EpsModel, x: torch.Tensor, t: torch.Tensor, name: str):
    """The network's first call; a RuntimeError on x of another dtype than float32 (a float32
    network given float64) is a DdimError naming `name`."""
    try:
        return eps_model(x, t)
    except RuntimeError as error:
        if x.dtype == torch.float32:
            raise
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DdimError(
            f"{name} is {str(x.dtype).removeprefix('torch.')} and the network failed on it "
            f"({text}); give {name} in the network's dtype (float32 for the U-Net)",
            argument=name,
        ) from error


def _latent(x, name: str) -> tuple[torch.Tensor, torch.dtype]:
    """`x` (a tensor or NumPy array of floats) in the dtype the samplers compute in (float32
    for float16 and bfloat16, else its own), and the dtype to return results in."""
    if not isinstance(x, torch.Tensor):
        if not hasattr(x, "__array__"):
            raise DdimError(f"{name} must be a tensor or a NumPy array, got {type(x).__name__}",
                            argument=name)
        x = torch.as_tensor(x)
    if not x.is_floating_point() or x.ndim < 1:
        raise DdimError(
            f"{name} must be a batch of floats in the model's range [-1, 1], got {x.dtype} of "
            f"shape {tuple(x.shape)} (uint8 images go through ddim.to_model_range)",
            argument=name,
        )
    dtype = x.dtype
    return (x.float() if dtype in (torch.float16, torch.bfloat16) else x), dtype


def _run(steps: Iterator[Step], x: torch.Tensor, callback: Callable[[Step], None] | None):
    """Drain a walk, calling `callback` on each step; return the final x."""
    for step in steps:
        x = step.x
        if callback is not None:
            callback(step)
    return x


# --- the second-order multistep solver --------------------------------------------------------


def dpmpp_2m_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    step: PlanStep,
    noise: torch.Tensor | None = None,
    *,
    clip_x0: bool = False,
    previous: Previous | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on a DDIM η = 0 pair; returns
    (x_to, x0_pred). It walks `ddim_plan(betas, τ, 0)` as `generalized_step` does:

        x̃_ti = (σ_ti/σ_ti−1) x̃_ti−1 − α_ti (e^{−h_i} − 1) D_i,
        D_i  = (1 + 1/(2 r_i)) x_θ(x̃_ti−1) − 1/(2 r_i) x_θ(x̃_ti−2),

    that is DDIM's step (its first order) plus α_ti (1 − e^{−h_i}) / (2 r_i) · (x0_pred − x0_prev),
    with x0_prev the `previous` step's prediction. The first step (no previous prediction yet) and
    the last (h = ∞, into clean data) are DDIM's. `clip_x0` clamps each x0_pred as DDIM's does;
    the extrapolated D_i itself is not clamped. Deterministic: `noise` is not used.
    """
    # first order: DDIM eq. 12 with η = 0, DPM-Solver++(1)
    x_to, x0_pred = generalized_step(x_t, eps, step, clip_x0=clip_x0)
    h = half_log_snr(step.alpha_bar_to) - half_log_snr(step.alpha_bar_from)
    if previous is None or not math.isfinite(h):
        return x_to, x0_pred
    prev = previous.step
    r = (half_log_snr(prev.alpha_bar_to) - half_log_snr(prev.alpha_bar_from)) / h
    # second order: the multistep correction, from the previous step's x0_pred
    correction = math.sqrt(step.alpha_bar_to) * -math.expm1(-h) / (2 * r)
    if correction:
        x_to = x_to + correction * (x0_pred - previous.x0_pred)
    return x_to, x0_pred


# --- public samplers ---------------------------------------------------------------------------


def _tau(betas: torch.Tensor, steps: int | Sequence[int], skip: str) -> list[int]:
    """τ of the public samplers: `ddim.timesteps` over this schedule (which `logsnr` reads)."""
    return timesteps(len(betas), steps, skip, betas=betas)


def sample(
    eps_model: EpsModel,
    x_T: torch.Tensor,
    betas: torch.Tensor,
    *,
    steps: int | Sequence[int],
    skip: str = "uniform",
    eta: float = 0.0,
    generator: Generator = None,
    clip_x0: bool = False,
    callback: Callable[[Step], None] | None = None,
) -> torch.Tensor:
    """Generalized DDIM sampling (eq. 12, σ from eq. 16) from x_T down to x_0 over τ.

    `steps` is S or an explicit timestep list; `skip` is "uniform", "quad", "trailing" or
    "logsnr" (see `ddim.timesteps`). η = 0 is deterministic DDIM, η = 1 matches DDPM's
    posterior. x_0 clipping is off by default (clipping makes DDIM non-invertible). The network
    is called len(τ) times. The result has x_T's dtype (see the module's note on inputs).
    """
    x, dtype = _latent(x_T, "x_T")
    betas = as_betas(betas)
    plan = ddim_plan(betas, _tau(betas, steps, skip), eta)
    walked = walk(eps_model, x, plan, generator=generator, clip_x0=clip_x0, name="x_T")
    return _run(walked, x, callback).to(dtype)


def sample_ddpm(
    eps_model: EpsModel,
    x_T: torch.Tensor,
    betas: torch.Tensor,
    *,
    steps: int | Sequence[int] | None = None,
    skip: str = "uniform",
    variance: str = "small",
    generator: Generator = None,
    clip_x0: bool = True,
    callback: Callable[[Step], None] | None = None,
) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) over τ (all T steps by default).

    variance "small" is the posterior β̃, "large" is β (the DDIM paper's σ̂). x_0 is clipped to
    [−1, 1] by default, as in the official `ddpm_noisy` path.
    """
    x, dtype = _latent(x_T, "x_T")
    betas = as_betas(betas)
    plan = ddpm_plan(betas, _tau(betas, len(betas) if steps is None else steps, skip), variance)
    walked = walk(eps_model, x, plan, generator=generator, clip_x0=clip_x0, name="x_T")
    return _run(walked, x, callback).to(dtype)


def sample_dpmpp_2m(
    eps_model: EpsModel,
    x_T: torch.Tensor,
    betas: torch.Tensor,
    *,
    steps: int | Sequence[int],
    skip: str = "uniform",
    clip_x0: bool = False,
    callback: Callable[[Step], None] | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) from x_T down to x_0 over τ: the
    probability-flow ODE to second order in λ, with DDIM's one network call per timestep.

    `steps` and `skip` are as for `sample` ("logsnr", uniform in λ, is DPM-Solver's spacing and
    the one on which the second order shows; see docs/sampling.md). The first step (no previous
    prediction yet) and the last (into clean data, h = ∞) are DDIM's η = 0 steps. Deterministic;
    x_0 clipping is off by default, as for DDIM.
    """
    x, dtype = _latent(x_T, "x_T")
    betas = as_betas(betas)
    plan = ddim_plan(betas, _tau(betas, steps, skip), eta=0.0)
    walked = walk(eps_model, x, plan, clip_x0=clip_x0, update=dpmpp_2m_step, name="x_T")
    return _run(walked, x, callback).to(dtype)


def encode(
    eps_model: EpsModel,
    x_0: torch.Tensor,
    betas: torch.Tensor,
    *,
    steps: int | Sequence[int],
    skip: str = "uniform",
    callback: Callable[[Step], None] | None = None,
) -> torch.Tensor:
    """Encode x_0 → x_T by running the deterministic DDIM ODE upward (eqs. 13/14), in x_0's
    dtype."""
    x, dtype = _latent(x_0, "x_0")
    betas = as_betas(betas)
    plan = encode_plan(betas, _tau(betas, steps, skip))
    return _run(walk(eps_model, x, plan, name="x_0"), x, callback).to(dtype)


def reconstruct(
    eps_model: EpsModel,
    x_0: torch.Tensor,
    betas: torch.Tensor,
    *,
    steps: int | Sequence[int],
    skip: str = "uniform",
) -> torch.Tensor:
    """sample ∘ encode with η = 0 (the paper's Table 2): S calls up, S calls down; the latent
    between them is kept in the computing dtype, the result returned in x_0's."""
    x, dtype = _latent(x_0, "x_0")
    x_T = encode(eps_model, x, betas, steps=steps, skip=skip)
    return sample(eps_model, x_T, betas, steps=steps, skip=skip, eta=0.0).to(dtype)


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of latents per image (DDIM App. D.5):
    sin((1−α)θ)/sin θ · z0 + sin(αθ)/sin θ · z1, θ = arccos(⟨z0, z1⟩ / (‖z0‖‖z1‖)).

    z0 and z1 are batches (B, …) of one shape, or single vectors (D,); tensors or NumPy arrays,
    computed in float64 and returned in z0's dtype. Latents pointing the same way (θ < 1e-6)
    are interpolated linearly, the limit of the formula: a latent with itself gives itself.
    A pair pointing opposite ways (θ > π − 1e-6), a zero latent (no direction) or one holding
    NaN or infinity is a DdimError naming the argument: opposite latents lie on infinitely many
    great circles, none shorter, so there is no one slerp to give.
    """
    z0, dtype = _latent(z0, "z0")
    z1, _ = _latent(z1, "z1")
    if z1.shape != z0.shape:
        raise DdimError(f"z1 has shape {tuple(z1.shape)}, z0 {tuple(z0.shape)}: they must match",
                        argument="z1")
    a, b = (z.double().reshape(len(z) if z.dim() > 1 else 1, -1) for z in (z0, z1))
    norms = _check_directions(a, b)
    cos = (a * b).sum(1) / norms
    theta = torch.arccos(cos.clamp(-1, 1)).view(-1, *([1] * (z0.dim() - 1)))
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=z0.device)
    sin = torch.sin(theta)
    near = sin.abs() < 1e-6  # parallel latents: fall back to linear interpolation
    opposite = (near.flatten() & (cos < 0)).nonzero()
    if len(opposite):
        raise DdimError(
            f"z1 points opposite to z0 (image {int(opposite[0])}): the great circles through "
            "them are all equally short, so slerp has no one path; perturb either latent",
            argument="z1",
        )
    w0 = torch.where(near, 1 - alpha, torch.sin((1 - alpha) * theta) / torch.where(near, 1, sin))
    w1 = torch.where(near, alpha, torch.sin(alpha * theta) / torch.where(near, 1, sin))
    return (w0 * z0.double() + w1 * z1.double()).to(dtype)


def _check_directions(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a‖‖b‖ per row of two (B, D) float64 batches; a row that is zero or not finite is a
    DdimError naming z0 or z1."""
    norms = []
    for name, z in (("z0", a), ("z1", b)):
        norm = z.norm(dim=1)
        bad = (~torch.isfinite(norm) | (norm == 0)).nonzero()
        if len(bad):
            k = int(bad[0])
            what = "is zero" if norm[k] == 0 else "holds NaN or infinity"
            raise DdimError(f"{name} {what} in image {k}: it has no direction to interpolate "
                            "along", argument=name)
        norms.append(norm)
    return norms[0] * norms[1]


def slerp_path(z0: torch.Tensor, z1: torch.Tensor, num: int) -> torch.Tensor:
    """`num` latents slerped from z0 to z1 (each (C, H, W)) at α = 0, 1/(num−1), …, 1; the ends
    are z0 and z1 exactly."""
    num = as_int(num, "num")
    if num < 2:
        raise DdimError(f"an interpolation needs num >= 2 images, got {num}", argument="num")
    alphas = torch.linspace(0, 1, num, dtype=torch.float64, device=z0.device)
    alphas = alphas.view(-1, *([1] * z0.dim()))
    return slerp(z0.expand(num, *z0.shape), z1.expand(num, *z1.shape), alphas)


def interpolate(
    eps_model: EpsModel,
    x0_a: torch.Tensor,
    x0_b: torch.Tensor,
    betas: torch.Tensor,
    *,
    steps: int | Sequence[int],
    skip: str = "uniform",
    num: int = 8,
) -> torch.Tensor:
    """Interpolate two images through their DDIM encodings: encode, slerp, decode (App. D.5).

    `x0_a` and `x0_b` are single images (C, H, W) in [−1, 1]; returns (num, C, H, W), the first
    and last being the reconstructions of `x0_a` and `x0_b`, in `x0_a`'s dtype.
    """
    (a, dtype), (b, _) = _latent(x0_a, "x0_a"), _latent(x0_b, "x0_b")
    if b.shape != a.shape:
        raise DdimError(f"x0_b has shape {tuple(b.shape)}, x0_a {tuple(a.shape)}: they must "
                        "match", argument="x0_b")
    z = encode(eps_model, torch.stack([a, b.to(a.dtype)]), betas, steps=steps, skip=skip)
    path = slerp_path(z[0], z[1], num)
    return sample(eps_model, path, betas, steps=steps, skip=skip, eta=0.0).to(dtype)
