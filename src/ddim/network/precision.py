"""The network as an ε-model (`ddim.diffusion.eps_model`) in the precision, memory layout and
compilation chosen for the device. The sampler's update itself always runs in the dtype of x.

`Precision` names a path; `sampling_precision(device)` is the one the commands use by default,
chosen by measurement (docs/performance.md): a path is the default only where a trained model's
images score the same as in float32 (KID of 2,000 samples within its noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddim.device import native_bf16
from ddim.diffusion.eps_model import EpsModel
from ddim.errors import DdimError


@dataclass(frozen=True)
class Precision:
    """How the network is run.

    bf16           bf16 autocast for the network (float32 out)
    bf16_below     with bf16: only for t < bf16_below; the noisiest steps, whose error DDIM
                   amplifies most (by √((1 − ᾱ_t)/ᾱ_t)), stay in float32
    pure           with bf16: no autocast; the network itself is cast to bf16, weights and every
                   activation, so GroupNorm and SiLU read and write bf16 where CUDA autocast
                   runs GroupNorm in float32 and casts between (float32 out)
    channels_last  NHWC memory layout for the network and its input
    compile        torch.compile (inductor, weights frozen) the network
    """

    bf16: bool = False
    bf16_below: int | None = None
    channels_last: bool = False
    compile: bool = False
    pure: bool = False

    def __post_init__(self):
        if self.pure and (not self.bf16 or self.bf16_below is not None):
            raise ValueError("a pure bf16 network runs every step in bf16: "
                             "pure needs bf16 and no bf16_below")


PRECISIONS = ("auto", "fp32", "mixed", "bf16", "pure-bf16")
MIXED_BELOW = 500  # `mixed`: bf16 for t < 500, float32 for the noisier steps


def named_precision(name: str, device: torch.device, *, compile: bool = False) -> Precision:
    """The path a `--precision` name stands for on `device`.

    auto   the measured default: `bf16` on CUDA and on CPUs with native bf16, else `fp32`
    fp32   float32 everywhere
    mixed  bf16 autocast for t < 500, float32 for the noisy steps whose error DDIM amplifies most:
           images within a few uint8 levels of float32 (bf16 moves them by about one on average)
    bf16   bf16 autocast for every step
    pure-bf16  the network cast to bf16, weights and activations (no autocast, no float32
           GroupNorm): the candidate for GPUs, where autocast's float32 norms and casts, not
           the convolutions, held sampling to a tenth of the card's peak (docs/performance.md)
    On an AMX CPU bf16 sampled the bundled model 2.6x faster than float32 and 1.5x faster than
    mixed, with KID of 2,000 DDIM S = 10 samples 36.2 against 35.4 (x 10^-3) in float32, where
    the estimate's standard deviation is 1.7 (docs/performance.md).
    Channels-last on CPUs (faster there, float32 results unchanged), not on CUDA: on an H100
    the network in NCHW ran DDIM faster than in NHWC, 153 against 131 img/s in bf16 and 139
    against 114 in float32 (CIFAR-10 config, S = 50, batch 500; docs/performance.md).
    """
    if name == "auto":
        name = "bf16" if device.type == "cuda" or native_bf16(device) else "fp32"
    if name not in PRECISIONS:
        raise DdimError(f"precision {name!r}: choose one of {', '.join(PRECISIONS)}",
                        argument="precision")
    bf16 = name in ("mixed", "bf16", "pure-bf16")
    below = MIXED_BELOW if name == "mixed" else None
    return Precision(bf16=bf16, bf16_below=below, channels_last=device.type != "cuda",
                     compile=compile, pure=name == "pure-bf16")


def sampling_precision(device: torch.device, fp32: bool = False) -> Precision:
    """The default path for sampling on `device` (`auto`); `fp32` forces float32."""
    return named_precision("fp32" if fp32 else "auto", device)


def describe(precision: Precision) -> str:
    """A short name for records: fp32, bf16, pure bf16 or bf16 for t < N; with the layout and
    compile."""
    if not precision.bf16:
        name = "fp32"
    elif precision.pure:
        name = "pure bf16"
    elif precision.bf16_below is None:
        name = "bf16"
    else:
        name = f"bf16 for t < {precision.bf16_below}, fp32 above"
    return name + (", channels-last" if precision.channels_last else "") + (
        ", compiled" if precision.compile else "")


def eps_model_for(net: torch.nn.Module, precision: Precision = Precision()) -> EpsModel:
    """The network as `eps_model(x_t, t)` on the path `precision` names; the output is float32
    whatever the network computed in, and no autograd graph is kept. Like `Module.to`, the
    layout and the pure-bf16 cast change `net` itself."""
    if precision.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if precision.pure:
        net = net.to(torch.bfloat16)
    run = net
    if precision.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights are constants while sampling: fold and prepack
        run = torch.compile(net)  # whole: freezing folds every weight (and its bf16 cast)

    @torch.no_grad()
    def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if precision.pure:
            return run(x.to(torch.bfloat16), t).float()
        bf16 = precision.bf16 and (
            precision.bf16_below is None or int(t.max()) < precision.bf16_below
        )
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return run(x, t).float()

    return eps_model
