"""The image-batch runners give what the one-screen API gives, batch by batch, with the sampler
built once; the trajectory row and interpolation strips end where the plain samplers do."""

import numpy as np
import pytest
import torch

from ddim.checkpoint import load_model
from ddim.data import to_model_range, to_uint8
from ddim.diffusion import samplers
from ddim.diffusion.oracle import GaussianOracle, toy_data
from ddim.diffusion.schedule import make_betas
from ddim.errors import DdimError
from ddim.network.precision import eps_model_for
from ddim.sampling import runners
from ddim.sampling.seeds import batches_of, seed_latents, slices
from ddim.sampling.settings import build_sampler

BETAS = make_betas("linear", 1000)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    net, config = load_model(tiny_checkpoint)
    return eps_model_for(net), config.diffusion.betas()


def images(n=5, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, 8, 8), np.uint8))


def test_shown_steps_are_evenly_spaced_and_keep_both_ends():
    assert runners.shown_steps(10, 4) == [0, 3, 6, 9]
    assert runners.shown_steps(3, 8) == [0, 1, 2]
    assert runners.shown_steps(100, 1) == [0]
    with pytest.raises(DdimError, match="show must be >= 1, got 0") as error:
        runners.shown_steps(10, 0)
    assert error.value.argument == "show"


def test_trajectory_row_ends_with_the_sample(model):
    eps_model, betas = model
    sampler = build_sampler(betas, 4, "uniform", eta=0.0)
    row = runners.trajectory_row(eps_model, sampler, seed_latents([5], (3, 8, 8), "cpu"), show=3)
    assert row.shape == (4, 3, 8, 8) and row.dtype == torch.uint8
    final = to_uint8(runners.sample_seeds(eps_model, sampler, [5], (3, 8, 8), "cpu"))
    assert torch.equal(row[-1:], final)


def test_encoding_and_reconstruction_in_batches_equal_the_api(model):
    eps_model, betas = model
    sampler = build_sampler(betas, 3, "quad", eta=0.0)
    x = images()
    done = []
    latents = runners.encode_images(eps_model, sampler, x, batch=2, device="cpu",
                                    progress=done.append)  # fmt: skip
    assert done == [2, 2, 1]
    expected = samplers.encode(eps_model, to_model_range(x), betas, steps=3, skip="quad")
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-5)
    rec = runners.reconstruct_images(eps_model, sampler, x, batch=5, device="cpu")
    direct = samplers.reconstruct(eps_model, to_model_range(x), betas, steps=3, skip="quad")
    assert torch.equal(rec, direct)  # one batch: the same arithmetic


def test_only_a_deterministic_unclipped_sampler_encodes(model):
    eps_model, betas = model
    for noisy in (build_sampler(betas, 3, eta=0.5), build_sampler(betas, 3, eta=0.0, clip_x0=True),
                  build_sampler(betas, 3, "uniform", "ddpm", variance="small"),
                  build_sampler(betas, 3, "uniform", "dpmpp-2m")):  # fmt: skip
        with pytest.raises(DdimError, match="deterministic sampler"):
            runners.encode_images(eps_model, noisy, images(1), batch=1, device="cpu")


def test_interpolation_strips_end_at_the_encoded_or_seeded_images(model):
    eps_model, betas = model
    sampler = build_sampler(betas, 3, eta=0.0)
    pair = images(2, seed=3)
    strip = runners.interpolate_images(eps_model, sampler, pair, num=4)
    rec = to_uint8(runners.reconstruct_images(eps_model, sampler, pair, batch=2, device="cpu"))
    assert strip.shape == (4, 3, 8, 8) and torch.equal(strip[[0, -1]], rec)
    z = seed_latents([3, 7], (3, 8, 8), "cpu")
    seeded = runners.interpolate_latents(eps_model, sampler, z[0], z[1], num=5)
    ends = to_uint8(runners.sample_seeds(eps_model, sampler, [3, 7], (3, 8, 8), "cpu"))
    assert torch.equal(seeded[[0, -1]], ends)


def test_walking_a_sampler_is_the_api_sampler_on_the_oracle():
    mean, std = toy_data(16, 0)
    oracle = GaussianOracle(mean, std, BETAS)
    x_T = torch.randn(4, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for name, option, api in [
        ("ddim", {"eta": 0.7}, lambda g: samplers.sample(oracle, x_T, BETAS, steps=6, eta=0.7,
                                                         generator=g)),
        ("ddpm", {"variance": "large"}, lambda g: samplers.sample_ddpm(
            oracle, x_T, BETAS, steps=6, variance="large", generator=g)),
    ]:  # fmt: skip
        sampler = build_sampler(BETAS, 6, "uniform", name, **option)
        ours = sampler.run(oracle, x_T, torch.Generator().manual_seed(5))
        assert torch.equal(ours, api(torch.Generator().manual_seed(5))), name


def test_batches_cover_everything_once():
    assert batches_of(list(range(7)), 3) == [(0, [0, 1, 2]), (3, [3, 4, 5]), (6, [6])]
    assert batches_of(list(range(7)), 3, rank=1, world_size=2) == [(3, [3, 4, 5])]
    assert [(s.start, s.stop) for s in slices(5, 2)] == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(DdimError, match="batch must be >= 1, got 0"):
        slices(5, 0)
