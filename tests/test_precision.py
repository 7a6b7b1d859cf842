"""Native-bf16 detection and fallback (ddim.device), the precision paths (ddim.network.precision),
and samplers that keep no autograd graph whatever the model does."""

import copy

import pytest
import torch

import ddim
from ddim.device import cpu_has_native_bf16, native_bf16
from ddim.diffusion.samplers import sample_dpmpp_2m
from ddim.network.precision import Precision, describe, eps_model_for, named_precision
from ddim.training import train


def test_detection_reads_the_cpu_flags(monkeypatch):
    monkeypatch.delenv("DDIM_CPU_BF16", raising=False)
    assert cpu_has_native_bf16(frozenset({"avx512f", "avx512_bf16"}))
    assert cpu_has_native_bf16(frozenset({"amx_bf16", "amx_tile"}))
    assert not cpu_has_native_bf16(frozenset({"avx2", "avx512f", "fma"}))
    assert not cpu_has_native_bf16(frozenset())  # no /proc/cpuinfo: fall back to fp32


@pytest.mark.parametrize(("flag", "expected"), [("1", True), ("0", False)])
def test_the_environment_overrides_detection(monkeypatch, flag, expected):
    monkeypatch.setenv("DDIM_CPU_BF16", flag)
    assert cpu_has_native_bf16(frozenset({"avx512_bf16"})) is expected
    assert native_bf16(torch.device("cpu")) is expected


def test_auto_is_bf16_with_native_bf16_and_fp32_without(monkeypatch):
    """KID decided it (docs/performance.md): bf16 on every step scored within the estimate's noise
    of float32 on the bundled model, so the default no longer keeps the noisy steps in float32."""
    cpu = torch.device("cpu")
    monkeypatch.setenv("DDIM_CPU_BF16", "1")
    assert named_precision("auto", cpu) == Precision(True, None, True)
    assert describe(named_precision("auto", cpu)) == "bf16, channels-last"
    assert describe(named_precision("mixed", cpu)) == "bf16 for t < 500, fp32 above, channels-last"
    monkeypatch.setenv("DDIM_CPU_BF16", "0")
    assert named_precision("auto", cpu) == Precision(False, None, True)
    assert named_precision("bf16", cpu).bf16  # asked for by name: honoured anyway
    with pytest.raises(ddim.DdimError, match="precision 'half'"):
        named_precision("half", cpu)



def test_cuda_paths_keep_nchw_and_cpu_paths_go_channels_last():
    """Measured on an H100: NCHW was the faster layout there (docs/performance.md, GPU)."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert named_precision("auto", cuda) == Precision(bf16=True, channels_last=False)
    assert describe(named_precision("auto", cuda)) == "bf16"
    for name in ("fp32", "mixed", "bf16"):
        assert not named_precision(name, cuda).channels_last
        assert named_precision(name, cpu).channels_last

def test_pure_bf16_is_a_named_path_that_needs_bf16_on_every_step():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert named_precision("pure-bf16", cpu) == Precision(bf16=True, channels_last=True, pure=True)
    assert describe(named_precision("pure-bf16", cuda)) == "pure bf16"
    assert describe(named_precision("pure-bf16", cpu, compile=True)) == (
        "pure bf16, channels-last, compiled")
    for bad in (dict(pure=True), dict(bf16=True, bf16_below=500, pure=True)):
        with pytest.raises(ValueError, match="pure needs bf16 and no bf16_below"):
            Precision(**bad)


def test_pure_bf16_casts_the_network_and_runs_without_autocast(tiny_checkpoint):
    """The network's weights and activations are bf16 (no autocast: its GroupNorms see bf16),
    the output is float32, and DDIM's images are as near float32 as autocast's (on the CPU
    autocast runs GroupNorm in bf16 already, so there the two paths agree)."""
    net, config = ddim.load_model(tiny_checkpoint)
    x_T = torch.randn((8, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    betas = config.diffusion.betas()
    cpu = torch.device("cpu")
    fp32 = ddim.sample(eps_model_for(copy.deepcopy(net)), x_T, betas, steps=5)
    autocast = ddim.sample(eps_model_for(copy.deepcopy(net), named_precision("bf16", cpu)), x_T,
                           betas, steps=5)  # fmt: skip
    seen = []
    norm = next(m for m in net.modules() if isinstance(m, torch.nn.GroupNorm))
    norm.register_forward_hook(lambda m, args, out: seen.append(
        (args[0].dtype, out.dtype, torch.is_autocast_enabled("cpu"))))
    eps_model = eps_model_for(net, named_precision("pure-bf16", cpu))
    assert all(p.dtype == torch.bfloat16 for p in net.parameters())
    assert eps_model(x_T, torch.tensor([999] * 8)).dtype == torch.float32
    pure = ddim.sample(eps_model, x_T, betas, steps=5)
    assert seen and all(s == (torch.bfloat16, torch.bfloat16, False) for s in seen)
    error, autocast_error = (pure - fp32).abs().mean(), (autocast - fp32).abs().mean()
    assert 0 < error <= 1.5 * autocast_error


class Recorder(torch.nn.Module):
    """Returns its input and records, per call, the timestep and whether autocast was on."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, x, t):
        self.calls.append((int(t[0]), torch.is_autocast_enabled("cpu")))
        return x * self.weight


def test_mixed_runs_bf16_below_the_threshold_only():
    net = Recorder()
    eps_model = eps_model_for(net, named_precision("mixed", torch.device("cpu")))
    ddim.sample(eps_model, torch.randn(1, 3, 4, 4), ddim.make_betas(), steps=10)
    assert net.calls and all(bf16 == (t < 500) for t, bf16 in net.calls)
    fp32 = eps_model_for(Recorder(), named_precision("fp32", torch.device("cpu")))
    assert fp32(torch.randn(1, 3, 4, 4), torch.tensor([10])).dtype == torch.float32


def test_dpmpp_2m_runs_under_the_mixed_path():
    net = Recorder()
    eps_model = eps_model_for(net, named_precision("mixed", torch.device("cpu")))
    out = sample_dpmpp_2m(eps_model, torch.randn(1, 3, 4, 4), ddim.make_betas(), steps=10,
                          skip="logsnr")
    assert [t for t, _ in net.calls] == ddim.timesteps(1000, 10, "logsnr",
                                                       betas=ddim.make_betas())[::-1]
    assert all(bf16 == (t < 500) for t, bf16 in net.calls) and out.dtype == torch.float32


def test_fp32_channels_last_gives_the_eager_images(tiny_checkpoint):
    net, config = ddim.load_model(tiny_checkpoint)
    x_T = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    betas = config.diffusion.betas()
    eager = ddim.sample(eps_model_for(net), x_T, betas, steps=5)
    layout = ddim.sample(eps_model_for(net, Precision(channels_last=True)), x_T, betas, steps=5)
    torch.testing.assert_close(layout, eager, atol=1e-4, rtol=0)


def test_forcing_fp32_in_training_gives_a_float32_step(tmp_path, blobs, small_config, monkeypatch):
    """With native bf16 forced on, amp=False still trains in fp32: the same weights as a run where
    bf16 is absent (the fallback), to the last bit."""
    config = small_config("training.n_iters=2")
    monkeypatch.setenv("DDIM_CPU_BF16", "0")
    fallback = train(config, tmp_path / "a", images=blobs(16), sample_every=0, progress=False)
    monkeypatch.setenv("DDIM_CPU_BF16", "1")
    forced = train(config, tmp_path / "b", images=blobs(16), amp=False, sample_every=0,
                   progress=False)  # fmt: skip
    a, b = ddim.load_checkpoint(fallback).model_state, ddim.load_checkpoint(forced).model_state
    assert all(torch.equal(a[k], b[k]) for k in a)
    bf16 = train(config, tmp_path / "c", images=blobs(16), sample_every=0, progress=False)
    c = ddim.load_checkpoint(bf16).model_state
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the default does take the bf16 path


class Growing(torch.nn.Module):
    """A trainable ε-model with a large activation per call, so a kept graph would be visible."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 64, 3, padding=1)
        self.out = torch.nn.Conv2d(64, 3, 3, padding=1)

    def forward(self, x, t):
        return self.out(torch.tanh(self.conv(x)))


def saved_for_backward(fn) -> int:
    """How many tensors autograd saves for a backward pass while `fn` runs (a kept graph)."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t,
                                                  lambda t: t):  # fmt: skip
        fn()
    return len(saved)


@pytest.mark.parametrize("sampler", ["sample", "sample_ddpm", "encode", "reconstruct",
                                     "interpolate", "sample_dpmpp_2m"])  # fmt: skip
def test_samplers_keep_no_graph_whatever_the_model(sampler):
    net = Growing()
    assert all(p.requires_grad for p in net.parameters())
    eps_model = lambda x, t: net(x, t)  # noqa: E731 (the README's own snippet)
    x = torch.randn(8, 3, 16, 16, requires_grad=True)
    betas = ddim.make_betas()
    run = {
        "sample": lambda: ddim.sample(eps_model, x, betas, steps=20, eta=1.0),
        "sample_ddpm": lambda: ddim.sample_ddpm(eps_model, x, betas, steps=20),
        "encode": lambda: ddim.encode(eps_model, x, betas, steps=20),
        "reconstruct": lambda: ddim.reconstruct(eps_model, x, betas, steps=20),
        "interpolate": lambda: ddim.interpolate(eps_model, x[0], x[1], betas, steps=20, num=4),
        "sample_dpmpp_2m": lambda: sample_dpmpp_2m(eps_model, x, betas, steps=20),
    }[sampler]
    # the check itself sees a graph being kept: one model call outside the samplers saves tensors
    assert saved_for_backward(lambda: eps_model(x, torch.tensor([5] * 8))) > 0
    out = []
    assert saved_for_backward(lambda: out.append(run())) == 0  # nothing kept, at any step
    assert not out[0].requires_grad and out[0].grad_fn is None
