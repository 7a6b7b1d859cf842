"""Runners: a Sampler applied to batches of images. Images from seeds, images to latents (the ODE
run upward), reconstructions, interpolation strips and trajectory rows.

Every runner takes the network as `eps_model(x_t, t)`, a `Sampler` built once by the command
(`ddim.sampling.settings`), and a device; images come in and go out as uint8 (N, C, H, W)
(`ddim.data` converts them to and from [−1, 1]), latents and reconstructions as float32 on the
CPU. Nothing here reads flags or files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from ddim.data import to_model_range, to_uint8
from ddim.diffusion.eps_model import EpsModel
from ddim.diffusion.samplers import generalized_step, reverse_plan, slerp_path, walk
from ddim.errors import DdimError
from ddim.sampling.finite import drain_checked
from ddim.sampling.seeds import batches_of, seed_noise, slices
from ddim.sampling.settings import Sampler

Progress = Callable[[int], None] | None


# --- images from seeds -------------------------------------------------------------------------


def sample_seeds(
    eps_model: EpsModel,
    sampler: Sampler,
    seeds: Sequence[int],
    shape: Sequence[int],
    device: torch.device | str,
    callback=None,
) -> torch.Tensor:
    """Images (float, [−1, 1]) for `seeds`, one per seed, whatever the batch they share."""
    x_T, generators = seed_noise(seeds, shape, device)
    return sampler.run(eps_model, x_T, generators, callback)


def iterate_images(
    eps_model: EpsModel,
    sampler: Sampler,
    seeds: Sequence[int],
    shape: Sequence[int],
    *,
    batch: int,
    device: torch.device | str,
) -> Iterator[torch.Tensor]:
    """uint8 batches for `seeds`, in order, kept in memory (for scoring without files)."""
    for _, batch_seeds in batches_of(seeds, batch):
        yield to_uint8(sample_seeds(eps_model, sampler, batch_seeds, shape, device))


# --- images to latents and back (eqs. 13/14, Table 2) -------------------------------------------


def encode_images(
    eps_model: EpsModel,
    sampler: Sampler,
    images: torch.Tensor,
    *,
    batch: int,
    device: torch.device | str,
    progress: Progress = None,
) -> torch.Tensor:
    """x_T of uint8 images by the deterministic sampler's ODE run upward (eqs. 13/14)."""
    encode = encoder(eps_model, sampler)
    return _over_batches(encode, images, batch=batch, device=device, progress=progress)


def reconstruct_images(
    eps_model: EpsModel,
    sampler: Sampler,
    images: torch.Tensor,
    *,
    batch: int,
    device: torch.device | str,
    progress: Progress = None,
) -> torch.Tensor:
    """Uint8 images encoded and decoded with the same deterministic sampler (Table 2)."""
    encode = encoder(eps_model, sampler)
    return _over_batches(lambda x_0: sampler.run(eps_model, encode(x_0)), images, batch=batch,
                         device=device, progress=progress)  # fmt: skip


def encoder(eps_model: EpsModel, sampler: Sampler) -> Callable[[torch.Tensor], torch.Tensor]:
    """x_0 ↦ x_T: the sampler's plan walked upward, endpoints swapped, by eq. 12 (eqs. 13/14).
    The sampler must be eq. 12 adding no noise and not clipping x_0 (DDIM, η = 0), else it has
    no inverse to run."""
    stochastic = any(step.noise_sigma > 0 or step.sigma > 0 for step in sampler.plan)
    if sampler.clip or stochastic or sampler.update is not generalized_step:
        raise DdimError(f"encoding needs a deterministic sampler without clipping (DDIM, eta=0), "
                        f"not {sampler.record()}")  # fmt: skip
    upward = reverse_plan(sampler.plan)

    def encode(x_0: torch.Tensor) -> torch.Tensor:
        return drain_checked(walk(eps_model, x_0, upward), x_0, upward, "ddim encoding")

    return encode


def _over_batches(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    *,
    batch: int,
    device: torch.device | str,
    progress: Progress,
) -> torch.Tensor:
    """`fn` applied to uint8 images batch by batch, in the model's range on `device`; on the CPU."""
    out = []
    for part in slices(len(images), batch):
        x_0 = to_model_range(images[part].to(device))
        out.append(fn(x_0).cpu())
        if progress is not None:
            progress(len(x_0))
    return torch.cat(out)


# --- interpolation (App. D.5) ------------------------------------------------------------------


def interpolate_latents(
    eps_model: EpsModel, sampler: Sampler, z0: torch.Tensor, z1: torch.Tensor, num: int
) -> torch.Tensor:
    """Decode the slerp path of `num` latents between two x_T; uint8 (num, C, H, W)."""
    return to_uint8(sampler.run(eps_model, slerp_path(z0, z1, num)))


def interpolate_images(
    eps_model: EpsModel, sampler: Sampler, pair: torch.Tensor, num: int
) -> torch.Tensor:
    """Interpolate two uint8 images (2, C, H, W) through their encodings: encode, slerp,
    decode (App. D.5); uint8 (num, C, H, W), the ends their reconstructions."""
    z = encoder(eps_model, sampler)(to_model_range(pair))
    return interpolate_latents(eps_model, sampler, z[0], z[1], num)


# --- consistency across S (Figs. 4/5) ----------------------------------------------------------


def shown_steps(num_steps: int, show: int) -> list[int]:
    """`show` step indices evenly spaced over 0..num_steps−1 (distinct, first and last kept)."""
    if show < 1:
        raise DdimError(f"show must be >= 1, got {show}", argument="show")
    picks = np.linspace(0, num_steps - 1, min(show, num_steps)).round().astype(int)
    return sorted(set(picks.tolist()))


def trajectory_row(
    eps_model: EpsModel, sampler: Sampler, x_T: torch.Tensor, show: int
) -> torch.Tensor:
    """Predicted x_0 at `show` evenly spaced steps of the walk, then the final image; uint8.

    Only the shown predictions are kept (as uint8, on the device); the rest are dropped.
    """
    wanted = set(shown_steps(sampler.network_calls, show))
    kept: list[torch.Tensor] = []

    def keep(step) -> None:
        if step.index in wanted:
            kept.append(to_uint8(step.x0_pred))

    x_0 = sampler.run(eps_model, x_T, callback=keep)
    return torch.cat([*kept, to_uint8(x_0)]).cpu()


def pad_rows(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Stack rows of different lengths into one grid batch (blank cells at the ends), and width."""
    width = max(len(r) for r in rows)
    padded = []
    for r in rows:
        blank = torch.zeros((width - len(r), *r.shape[1:]), dtype=r.dtype)
        padded.append(torch.cat([r, blank]))
    return torch.cat(padded), width
