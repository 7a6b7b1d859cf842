"""Throughput benchmarks: sampling and training, the fp32 eager path against the faster ones.

Sampling (DDIM, η = 0) runs every path on the same x_T and reports images/s, achieved TFLOP/s
(network FLOPs counted once with `torch.utils.flop_counter`), the percentage of a given peak, peak
GPU memory, and how far each path's uint8 images are from the fp32 eager ones. Those differences
mean something only for trained weights (`weights=`): random weights saturate most pixels, which
hides every difference. Where diffusers is installed, its DDIMPipeline loop (UNet2DModel +
DDIMScheduler) runs on the same weights and x_T, the comparison users make.

Training times full steps (Adam, gradient clipping, EMA) on data held on the device.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddim.config import Config
from ddim.data import infinite_batches, to_model_range, to_uint8
from ddim.device import native_bf16
from ddim.diffusion.samplers import sample
from ddim.diffusion.schedule import alpha_bars, timesteps
from ddim.errors import DdimError
from ddim.network.compiled import compile_blocks
from ddim.network.precision import Precision, eps_model_for, sampling_precision
from ddim.network.unet import UNet, reference_init_
from ddim.training import Objective, Schedule, init_training, train_step
from ddim.training.recipe import compiled_gradient_errors


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
    profile: dict | None = None  # `profile_call` of one network call, with --profile


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


def _timed(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int,
    warm_up: Callable[[], object] | None = None,
) -> tuple[float, object, float]:
    """Seconds per call of `fn` after one warm-up call (of `warm_up` if given, else `fn`), the
    last result, and the warm-up's seconds (a compiled path's compilation)."""
    start = time.perf_counter()
    out = (warm_up or fn)()
    _synchronize(device)
    warm_seconds = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    _synchronize(device)
    return (time.perf_counter() - start) / repeats, out, warm_seconds


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _result(task, path, batch, seconds, flops_per_image, peak_tflops, device, note=""):
    rate = batch / seconds
    tflops = rate * flops_per_image / 1e12
    percent = 100 * tflops / peak_tflops if peak_tflops else None
    return Result(task, path, batch, rate, tflops, percent, _peak_gib(device), seconds, note)


def sampling_paths(
    device: torch.device, compile: bool = False, only: Sequence[str] | None = None
) -> dict[str, Precision]:
    """The paths worth comparing on `device`: fp32 eager and channels-last and, where bf16 is
    native, bf16 autocast for every step or only for t < 500 (the noisiest steps, whose error DDIM
    amplifies most, stay fp32) and the network cast to bf16 (pure bf16, no autocast), each with
    and without channels-last; `only` keeps the paths of these names ("default" among them),
    `compile` adds each kept path but fp32 eager compiled. The path `ddim sample` uses by
    default is marked."""
    paths = {"fp32 eager": Precision(), "fp32 channels-last": Precision(channels_last=True)}
    if native_bf16(device):
        for name, bf16 in (("bf16", Precision(bf16=True)),
                           ("bf16 for t < 500", Precision(bf16=True, bf16_below=500)),
                           ("pure bf16", Precision(bf16=True, pure=True))):  # fmt: skip
            paths[name] = bf16
            paths[f"{name}, channels-last"] = replace(bf16, channels_last=True)
    default = sampling_precision(device)
    if default not in paths.values():
        paths["default"] = default
    if only is not None:  # "default" names the default path, whichever it is
        alias = next(name for name, p in paths.items() if p == default)
        only = [alias if name == "default" else name for name in only]
        unknown = [name for name in only if name not in paths]
        if unknown:
            raise DdimError(f"paths: no sampling path {unknown[0]!r} on {device.type}; the "
                            f"paths are {', '.join(repr(n) for n in paths)}",
                            argument="paths")  # fmt: skip
        paths = {name: p for name, p in paths.items() if name in only}
    if compile:
        paths |= {f"{name} + compile": replace(p, compile=True)
                  for name, p in paths.items() if name != "fp32 eager"}  # fmt: skip
    return {f"{name} (default)" if p == default else name: p for name, p in paths.items()}


KINDS = (  # (kind, substrings of an op's or kernel's lower-cased name), the first match wins
    ("attention", ("attention", "flash", "fmha", "sdpa", "softmax")),
    ("normalization", ("group_norm", "groupnorm", "layer_norm", "batch_norm", "rowwisemoments",
                       "computefusedparams")),
    ("compiled (fused)", ("triton", "cpp_fused", "compiledfunction", "compiled region")),
    ("convolution and matmul", ("conv", "gemm", "xmma", "cutlass", "aten::mm", "aten::addmm",
                                "aten::bmm", "aten::linear", "wgmma")),
    ("layout and casts", ("copy", "nchwtonhwc", "nhwctonchw", "transpose", "clone", "contiguous",
                          "cast", "convert")),
)
OTHER = "elementwise and other"


def op_kind(name: str) -> str:
    """The kind of work an operator or GPU kernel does, from its name (`KINDS`)."""
    lowered = name.lower()
    return next((kind for kind, keys in KINDS if any(k in lowered for k in keys)), OTHER)


def profile_call(fn: Callable[[], object], device: torch.device, top: int = 12) -> dict:
    """Where one call of `fn` spends its time: `torch.profiler` self times (of the GPU kernels on
    CUDA, of the operators on the CPU) summed by `op_kind`, in ms and as shares, and the `top`
    kernels or operators. The call runs once untimed first, so that nothing is first-call
    work."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    _synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        _synchronize(device)
    events = prof.key_averages()
    if device.type == "cuda":
        named = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else \
            "self_cuda_time_total"  # its name before PyTorch 2.4
        times = [(e.key, getattr(e, named), e.count) for e in events
                 if e.device_type == DeviceType.CUDA]  # fmt: skip
    else:
        times = [(e.key, e.self_cpu_time_total, e.count) for e in events]
    times = [(name, us / 1000, count) for name, us, count in times if us > 0]
    total = sum(ms for _, ms, _ in times)
    by_kind: dict[str, float] = {}
    for name, ms, _ in times:
        kind = op_kind(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + ms
    ranked = sorted(times, key=lambda row: -row[1])[:top]
    return {
        "clock": "GPU kernels" if device.type == "cuda" else "CPU operators",
        "total_ms": total,
        "by_kind": {kind: {"ms": ms, "share": ms / total}
                    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top": [{"name": name[:160], "ms": ms, "calls": count, "kind": op_kind(name)}
                for name, ms, count in ranked],
    }  # fmt: skip


def image_difference(reference: torch.Tensor, other: torch.Tensor, against: str = "fp32") -> str:
    """Mean and max |Δ| in uint8 levels and the share of values that differ, as a note."""
    diff = (reference.int() - other.int()).abs().float()
    return (f"vs {against}: mean |Δ| {diff.mean():.3f}, max |Δ| {diff.max():.0f} (uint8 levels), "
            f"{100 * (diff > 0).float().mean():.2f}% differ")


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
    weights: dict[str, torch.Tensor] | None = None,
    diffusers: bool = True,
    paths: Sequence[str] | None = None,
    cudnn_benchmark: bool = False,
    profile: bool = False,
) -> list[Result]:
    """DDIM (η = 0) sampling throughput of each path of `sampling_paths` (and diffusers');
    `cudnn_benchmark` lets cuDNN time its convolution algorithms for these shapes first (during
    the untimed warm-up) on every path, diffusers' included (no effect off CUDA); `profile` adds
    to each of our paths where one network call on the batch spends its time (`profile_call`)."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark
    try:
        return _bench_sampling(config, device, batch, steps, skip, repeats, compile, peak_tflops,
                               weights, diffusers, paths, cudnn_benchmark, profile)  # fmt: skip
    finally:
        torch.backends.cudnn.benchmark = previous


def _bench_sampling(config, device, batch, steps, skip, repeats, compile, peak_tflops, weights,
                    diffusers, paths, cudnn_benchmark, profile) -> list[Result]:  # fmt: skip
    torch.manual_seed(0)
    net = UNet.from_config(config.model, config.data.image_size)
    if weights is None:
        reference_init_(net)
    else:
        net.load_state_dict(weights)
    net = net.to(device).eval()
    betas = config.diffusion.betas()
    calls = len(timesteps(len(betas), steps, skip, betas=betas))
    flops = forward_flops(net, config, device) * calls
    shape = (batch, config.model.in_channels, config.data.image_size, config.data.image_size)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    results, reference = [], None
    suffix = ""
    if cudnn_benchmark:
        suffix = ", cudnn.benchmark" if device.type == "cuda" else " (cudnn.benchmark: not CUDA)"
    for name, precision in sampling_paths(device, compile, paths).items():
        name += suffix
        eps_model = eps_model_for(copy.deepcopy(net), precision)
        run = lambda m=eps_model: sample(m, x_T, betas, steps=steps, skip=skip)  # noqa: E731
        warm = lambda m=eps_model: sample(m, x_T, betas, steps=[0, 999])  # noqa: E731
        seconds, x_0, warm_seconds = _timed(run, device, repeats, warm_up=warm)
        images = to_uint8(x_0).cpu()
        if reference is None:
            reference, against = images, name.removesuffix(suffix).removesuffix(" (default)")
        note = "" if images is reference else image_difference(reference, images, against)
        if precision.compile:
            note = "; ".join(filter(None, [f"first call {warm_seconds:.0f} s (compiling)", note]))
        results.append(_result("sample", name, batch, seconds, flops, peak_tflops, device, note))
        if profile:
            t = torch.full((batch,), len(betas) // 2, device=device)
            results[-1].profile = profile_call(lambda m=eps_model, t=t: m(x_T, t), device)
    if diffusers and _diffusers_available():
        seconds, images = _diffusers_sampling(net, config, x_T, steps, skip, repeats, device)
        name = "diffusers DDIMPipeline loop, fp32" + suffix
        note = image_difference(reference, images, against)
        results.append(_result("sample", name, batch, seconds, flops, peak_tflops, device, note))
    return results


def _diffusers_available() -> bool:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


def _diffusers_sampling(net, config, x_T, steps, skip, repeats, device):
    """(seconds per batch, uint8 images) of diffusers' DDIM loop on our weights and x_T."""
    import diffusers

    from ddim.checkpoint.diffusers import (
        diffusers_scheduler_config,
        diffusers_unet_config,
        to_diffusers_state,
    )

    unet_config = diffusers_unet_config(config.model, config.data.image_size)
    unet_config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    unet = diffusers.UNet2DModel(**unet_config)
    unet.load_state_dict(to_diffusers_state(net.state_dict()))
    unet = unet.to(device).eval()
    scheduler_config = {k: v for k, v in diffusers_scheduler_config(config).items()
                        if not k.startswith("_")}
    scheduler = diffusers.DDIMScheduler(**{**scheduler_config, "timestep_spacing":
                                           "leading" if skip == "uniform" else "trailing"})

    @torch.no_grad()
    def run():
        scheduler.set_timesteps(steps)
        x = x_T
        for t in scheduler.timesteps:
            eps = unet(x, t).sample
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
        return x

    seconds, x_0, _ = _timed(run, device, repeats)
    return seconds, to_uint8(x_0).cpu()


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
    """Training-step throughput (EMA and clipping on): fp32 eager against bf16 autocast where it
    is native (+ compile when asked)."""
    size = config.data.image_size
    if images is None:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(
            0, 256, (max(4 * batch, 512), 3, size, size), generator=g, dtype=torch.uint8
        )
    images = images.to(device)
    flops = 3 * forward_flops(UNet.from_config(config.model, size).to(device), config, device)
    alpha_bar = alpha_bars(config.diffusion.betas()).to(device, torch.float32)
    fast = native_bf16(device)
    default = f"{'bf16 autocast, ' if fast else ''}channels-last (ddim train's default)"
    paths = [("fp32 eager", False, False, False), (default, fast, True, False)]
    if compile:
        paths.append((default.replace(" (ddim train's default)", "") + " + compile", fast,
                      True, True))  # fmt: skip
    objective = Objective.from_config(config)
    schedule = replace(Schedule.from_config(config), batch_size=batch)
    results = []
    for name, amp, channels_last, use_compile in paths:
        state = init_training(config, device, channels_last=channels_last)
        model = compile_blocks(state.net) if use_compile else state.net
        layout = torch.channels_last if channels_last else torch.contiguous_format
        batches = (
            x.contiguous(memory_format=layout) for x in infinite_batches(images, batch, seed=0)
        )

        def step(state=state, model=model, batches=batches, amp=amp):
            return train_step(state, next(batches), alpha_bar, objective=objective,
                              schedule=schedule, model=model, amp=amp)  # fmt: skip

        seconds, _, warm_seconds = _timed(step, device, repeats)
        note = ""
        if use_compile:
            x_0 = to_model_range(images[:2])
            wrong = compiled_gradient_errors(state, model, x_0, alpha_bar, objective, amp=amp)
            note = f"first step {warm_seconds:.0f} s (compiling); " + (
                f"WRONG: {len(wrong)} parameters get no gradient; ddim train refuses" if wrong
                else "gradients checked against eager")  # fmt: skip
        results.append(_result("train", name, batch, seconds, flops, peak_tflops, device, note))
    return results


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and whether it has native bf16."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = "cpu"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({'native bf16' if native_bf16(device) else 'no native bf16'})"


def as_rows(results: list[Result]) -> list[dict]:
    """Results as plain dicts (for JSON)."""
    return [asdict(r) for r in results]
