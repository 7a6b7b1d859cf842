"""Property-based tests of the samplers and timestep sub-sequences, on the exact Gaussian oracle.

For any S in 1..T, skip kind, η in [0, 2], small shape and float dtype: the output is finite,
keeps shape and dtype, and the same seeds give the same images; `timesteps` is strictly
increasing within [0, T); encode → sample with S = T reconstructs the input.
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddim import GaussianOracle, encode, generators_from_seeds, make_betas, sample, timesteps

T = 50
BETAS = make_betas("linear", T, 1e-4 * 1000 / T, 0.02 * 1000 / T)
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

shapes = st.tuples(
    st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)
)  # (B, C, H, W)
dtypes = st.sampled_from([torch.float32, torch.float64])
skips = st.sampled_from(["uniform", "quad", "trailing"])


def oracle_for(shape, seed=0) -> GaussianOracle:
    """The exact ε-predictor for a per-pixel Gaussian of shape (C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(shape[1:], generator=g, dtype=torch.float64) - 0.5
    std = 0.05 + 0.4 * torch.rand(shape[1:], generator=g, dtype=torch.float64)
    return GaussianOracle(mean, std, BETAS)


@SETTINGS
@given(
    steps=st.integers(1, T),
    skip=skips,
    eta=st.floats(0.0, 2.0),
    shape=shapes,
    dtype=dtypes,
    seed=st.integers(0, 2**31 - 1),
)
def test_sampling_is_finite_shaped_and_reproducible(steps, skip, eta, shape, dtype, seed):
    oracle = oracle_for(shape)
    seeds = [seed + k for k in range(shape[0])]

    def run():
        generators = generators_from_seeds(seeds)
        x_T = torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype) for g in generators])
        return sample(oracle, x_T, BETAS, steps=steps, skip=skip, eta=eta, generator=generators)

    first, second = run(), run()
    assert first.shape == shape and first.dtype == dtype
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


@SETTINGS
@given(t_total=st.integers(1, 1000), data=st.data(), skip=skips)
def test_timesteps_are_strictly_increasing_in_range(t_total, data, skip):
    steps = data.draw(st.integers(1, t_total))
    seq = timesteps(t_total, steps, skip)
    assert all(isinstance(t, int) for t in seq)
    assert 0 <= seq[0] and seq[-1] < t_total
    assert all(a < b for a, b in zip(seq, seq[1:]))
    assert 1 <= len(seq) <= steps
    if skip in ("uniform", "trailing"):
        assert len(seq) == steps
    if skip == "trailing":
        assert seq[-1] == t_total - 1


@settings(max_examples=8, deadline=None, derandomize=True)
@given(shape=shapes, skip=st.sampled_from(["uniform", "trailing"]), seed=st.integers(0, 1000))
def test_encode_then_sample_with_all_steps_reconstructs(shape, skip, seed):
    """With S = T = 1000 (the paper's schedule) the ODE's discretisation error is small."""
    betas = make_betas("linear", 1000)
    oracle = oracle_for(shape, seed)
    oracle = GaussianOracle(oracle.mean, oracle.variance.sqrt(), betas)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    x_0 = oracle.mean + oracle.variance.sqrt() * z
    x_T = encode(oracle, x_0, betas, steps=1000, skip=skip)
    assert torch.isfinite(x_T).all()
    back = sample(oracle, x_T, betas, steps=1000, skip=skip, eta=0.0)
    torch.testing.assert_close(back, x_0, rtol=0, atol=1e-2)  # images span [-1, 1]
