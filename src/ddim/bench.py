"""Throughput benchmarks: sampling and training, the fp32 eager path against the fast path.

The fast path is what `ddim sample` and `ddim train` use on CUDA: bf16 autocast, channels-last,
fused Adam and EMA, data held on the device, and optionally `torch.compile`. Each benchmark reports
images/s, achieved TFLOP/s (network FLOPs counted once with `torch.utils.flop_counter`), the
percentage of a given peak, peak device memory, and for sampling how far the fast path's images are
from the fp32 ones.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddim.config import Config
from ddim.data import infinite_batches, to_uint8
from ddim.generate import betas_of, eps_model_for
from ddim.samplers import sample
from ddim.schedule import alpha_bars, timesteps
from ddim.train import _train_step, init_training
from ddim.unet import UNet, reference_init_


@dataclass
class Result:
    """One benchmark line."""

    task: str
    path: str
    batch: int
    images_per_s: float
    tflops: float
    percent_of_peak: float | None
    peak_memory_gib: float | None
    seconds: float
    note: str = ""


def forward_flops(net: torch.nn.Module, config: Config, device: torch.device) -> float:
    """FLOPs of one forward pass for one image (a multiply-add counts 2)."""
    size = config.data.image_size
    x = torch.zeros(1, config.model.in_channels, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, torch.zeros(1, dtype=torch.long, device=device))
    return float(counter.get_total_flops())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    """Seconds per call of `fn` after one warm-up call, and the last result."""
    out = fn()
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    _synchronize(device)
    return (time.perf_counter() - start) / repeats, out


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _result(task, path, batch, seconds, flops_per_image, peak_tflops, device, note=""):
    rate = batch / seconds
    tflops = rate * flops_per_image / 1e12
    percent = 100 * tflops / peak_tflops if peak_tflops else None
    return Result(task, path, batch, rate, tflops, percent, _peak_gib(device), seconds, note)


def bench_sampling(
    config: Config,
    *,
    device: torch.device,
    batch: int,
    steps: int,
    skip: str = "uniform",
    repeats: int = 2,
    compile: bool = False,
    peak_tflops: float | None = None,
) -> list[Result]:
    """DDIM (η = 0) sampling throughput: fp32 eager against bf16 + channels-last (+ compile)."""
    torch.manual_seed(0)
    net = reference_init_(UNet.from_config(config.model, config.data.image_size)).to(device).eval()
    betas = betas_of(config)
    calls = len(timesteps(len(betas), steps, skip))
    flops = forward_flops(net, config, device) * calls
    shape = (batch, config.model.in_channels, config.data.image_size, config.data.image_size)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    paths = {"fp32 eager": eps_model_for(net, amp=False, channels_last=False)}
    fast_net = copy.deepcopy(net)
    fast = eps_model_for(
        torch.compile(fast_net) if compile else fast_net,
        amp=device.type == "cuda",
        channels_last=device.type == "cuda",
    )
    paths["fast" + (" + compile" if compile else "")] = fast
    results, images = [], {}
    for name, eps_model in paths.items():
        run = lambda m=eps_model: sample(m, x_T, betas, steps=steps, skip=skip)  # noqa: E731
        seconds, x_0 = _timed(run, device, repeats)
        images[name] = to_uint8(x_0).int()
        results.append(_result("sample", name, batch, seconds, flops, peak_tflops, device))
    reference, other = images["fp32 eager"], images[results[-1].path]
    diff = (reference - other).abs().float()
    results[
        -1
    ].note = f"vs fp32: mean |Δ| {diff.mean():.3f}, max |Δ| {diff.max():.0f} (uint8 levels)"
    return results


def bench_training(
    config: Config,
    *,
    device: torch.device,
    batch: int,
    repeats: int = 10,
    compile: bool = False,
    peak_tflops: float | None = None,
    images: torch.Tensor | None = None,
) -> list[Result]:
    """Training-step throughput (EMA and clipping on): fp32 eager against bf16 (+ compile)."""
    size = config.data.image_size
    if images is None:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(
            0, 256, (max(4 * batch, 512), 3, size, size), generator=g, dtype=torch.uint8
        )
    images = images.to(device)
    flops = 3 * forward_flops(UNet.from_config(config.model, size).to(device), config, device)
    alpha_bar = alpha_bars(betas_of(config)).to(device, torch.float32)
    results = []
    for name, amp, use_compile in (("fp32 eager", False, False), ("fast", True, compile)):
        if device.type != "cuda" and amp:
            amp = False
        net, ema, optimizer, generator = init_training(config, device)
        model = torch.compile(net) if use_compile else net
        batches = infinite_batches(images, batch, seed=0)
        state = {"step": 0}

        def step(
            model=model,
            net=net,
            ema=ema,
            optimizer=optimizer,
            generator=generator,
            batches=batches,
            amp=amp,
            state=state,
        ):
            state["step"] += 1
            return _train_step(
                config,
                model,
                net,
                ema,
                optimizer,
                batches,
                generator,
                alpha_bar,
                state["step"],
                0,
                1,
                amp,
            )

        seconds, _ = _timed(step, device, repeats)
        label = name + (" + compile" if use_compile else "")
        results.append(_result("train", label, batch, seconds, flops, peak_tflops, device))
    return results


def as_rows(results: list[Result]) -> list[dict]:
    """Results as plain dicts (for JSON)."""
    return [asdict(r) for r in results]
