"""What a checkpoint holds, whatever file it came from, and the checks every loader shares:
weights fit the U-Net a config describes and are finite, pickles are opened without running
code, and the network's activations fit in memory at the image size it is run at.

A config is compared with the weights in two stages, so that a forged config costs no more than
the file that carries it: first its counts (levels, residual blocks per level, where attention
is) against the weights' names, reading the names only (`check_config_counts`); only then is its
U-Net laid out, on the `meta` device, for every name and shape (`check_weights_fit`). A config
claiming 100,000 blocks per level beside weights of 2 is refused naming
`model.num_res_blocks` before a single module is made.

A checkpoint holds one or two sets of weights. With two, `model_state` is the raw weights and
`ema_state` their EMA. With one, `model_weights` says what it is: "raw" (a run without EMA, an
official ckpt.pth without its EMA), "ema" (an export of the EMA weights, such as the bundled
model) or "unlabelled" (a plain state_dict or a diffusers folder, which do not say). Asking for
the raw weights of a file that holds only EMA or unlabelled weights is an error, not a silent
substitute (`weights_label`); asking for the EMA weights of a file without them gives the one set
there is, labelled truthfully, so records can say which weights ran.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddim.config import Config, ModelConfig
from ddim.errors import DdimError
from ddim.network.unet import UNet

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP and torch.compile


@dataclass
class Checkpoint:
    """What a checkpoint file holds, whatever its kind; `config` is None for foreign files."""

    path: Path
    kind: str  # "ddim", "official", "state_dict" or "diffusers"
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None
    model_config: ModelConfig
    image_size: int
    config: Config | None = None
    step: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    train_state_loader: Callable[[], dict | None] = field(default=lambda: None, repr=False)
    model_weights: str = "raw"  # what model_state holds: "raw", "ema" or "unlabelled"

    @property
    def has_ema(self) -> bool:
        """Whether the file holds EMA weights beside the raw ones (two sets)."""
        return self.ema_state is not None

    @property
    def images_seen(self) -> int | None:
        """The images the weights have seen, a warm start's lineage included: what the file
        records, else step × the config's batch (an older file of ours), else None (foreign)."""
        images = (self.meta.get("extra") or {}).get("images_seen")
        if images is None and self.config is not None and self.step is not None:
            images = self.step * self.config.training.batch_size
        return None if images is None else int(images)

    @property
    def cpu_hours(self) -> float | None:
        """The CPU hours of the runs behind the weights, where the file records them."""
        return (self.meta.get("extra") or {}).get("cpu_hours")

    def weights_label(self, use_ema: bool = True) -> str:
        """Which weights `weights(use_ema)` gives: "ema", "raw" or "unlabelled" (a file's only
        set, of unknown kind); raw weights of a file that holds none is a DdimError."""
        if self.has_ema:
            return "ema" if use_ema else "raw"
        if not use_ema and self.model_weights != "raw":
            what = {"ema": "its EMA weights only"}.get(
                self.model_weights, "one set of weights, not labelled raw or EMA"
            )
            raise DdimError(
                f"{str(self.path)!r} holds {what}: there are no raw weights to use "
                "(use_ema=False; --raw on the command line)"
            )
        return self.model_weights

    def weights(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """The EMA weights if asked for and present, else the one set there is (`weights_label`
        says which it is, and refuses raw weights the file does not hold)."""
        self.weights_label(use_ema)
        return self.ema_state if use_ema and self.has_ema else self.model_state

    def load_train_state(self) -> dict | None:
        """The training state saved beside the weights (checked against its hash), or None."""
        return self.train_state_loader()


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop `module.` (DataParallel) and `_orig_mod.` (torch.compile) from every key."""
    out = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def check_config_counts(state: dict, model: ModelConfig, image_size: int, source: str) -> None:
    """Raise a DdimError naming the config field whose count the weights' names contradict: the
    levels (`model.ch_mult`), the residual blocks per level (`model.num_res_blocks`), the levels
    with attention (`model.attn_resolutions` at `data.image_size`). Reads names only and builds
    nothing, so a config's claim costs no more than the weights that must back it."""
    levels: dict[int, set[int]] = {}  # down level -> its block indices
    attention: set[int] = set()
    for key in state:
        parts = key.split(".")
        if len(parts) < 4 or parts[0] != "down" or not parts[1].isdigit():
            continue
        blocks = levels.setdefault(int(parts[1]), set())
        if parts[2] == "block" and parts[3].isdigit():
            blocks.add(int(parts[3]))
        elif parts[2] == "attn":
            attention.add(int(parts[1]))
    found = sorted(levels)
    span = f"down.{found[0]} to down.{found[-1]}" if found else "no down.* tensors"
    blocks = max((len(b) for b in levels.values()), default=0)
    wanted = sorted(i for i in range(len(model.ch_mult))
                    if image_size // 2**i in model.attn_resolutions)
    if len(model.ch_mult) != len(found):
        evidence = (f"model.ch_mult={list(model.ch_mult)} has {len(model.ch_mult)} levels, the "
                    f"weights {len(found)} ({span})")
    elif model.num_res_blocks != blocks:
        evidence = (f"model.num_res_blocks is {model.num_res_blocks}, the weights hold {blocks} "
                    f"residual blocks per level (down.{found[0]}.block.0 to {blocks - 1})")
    elif wanted != sorted(attention):
        evidence = (f"model.attn_resolutions={list(model.attn_resolutions)} at data.image_size="
                    f"{image_size} puts attention at levels {wanted}, the weights at levels "
                    f"{sorted(attention)} (down.N.attn)")
    else:
        return
    raise DdimError(f"{source} does not fit the U-Net config: {evidence}")


def check_weights_fit(state: dict, model: ModelConfig, image_size: int, source: str) -> None:
    """Raise a DdimError unless `state` has exactly the U-Net's keys and shapes; the config's
    counts are checked against the weights' names first (`check_config_counts`), so the U-Net
    laid out to compare them is no larger than the weights."""
    check_config_counts(state, model, image_size, source)
    with torch.device("meta"):
        net = UNet.from_config(model, image_size)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = {
        "missing": sorted(expected.keys() - state.keys()),
        "unexpected": sorted(state.keys() - expected.keys()),
        "wrong shape": sorted(
            k for k in expected.keys() & state.keys() if tuple(state[k].shape) != expected[k]
        ),
    }
    problems = [
        f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        for label, keys in found.items()
        if keys
    ]
    if problems:
        raise DdimError(f"{source} does not fit the U-Net config: {'; '.join(problems)}")


def activation_bytes(
    model: ModelConfig,
    image_size: int,
    batch: int = 1,
    bytes_per_value: int = 4,
    *,
    attention_scores: bool = True,
) -> int:
    """The bytes of activations the U-Net's forward pass holds at its fullest, for `batch`
    images of side `image_size`, each value `bytes_per_value` bytes (4: float32, 2: bf16).

    It follows `UNet.forward`: the skip connections of the down path are held until the up path
    reads them, and at each block come its input, its output and the block's own temporaries
    (a residual block's normalised input and hidden state; attention's q, k, v and output, and
    with `attention_scores` its HW x HW matrix of scores: `scaled_dot_product_attention` holds
    it for the network's q, k and v in the default layout, not in channels-last, where its fused
    kernels run). The weights, the sampler's few tensors of the image's size and the allocator's
    slack are not counted: it is what the pass needs, within 3 % of the peak measured on the CPU
    in float32 (tests/test_faults_bounds.py).
    """
    widths = [model.ch * m for m in model.ch_mult]
    res, c_h = image_size, model.ch
    skips = [(model.ch, res * res)]  # (channels, pixels) of each tensor the up path will read
    held = model.ch * res * res
    peak = held + model.in_channels * res * res
    for i, width in enumerate(widths):  # the down path
        attention = res in model.attn_resolutions
        for _ in range(model.num_res_blocks):
            peak = max(peak, held + _resnet_temporaries(c_h, width) * res * res)
            if attention:
                peak = max(peak, held + _attention(width, res * res, attention_scores))
            c_h = width
            skips.append((width, res * res))
            held += width * res * res
        if i != len(widths) - 1:
            peak = max(peak, held + width * ((res + 1) ** 2 + (res // 2) ** 2))  # pad, conv
            res //= 2
            skips.append((width, res * res))
            held += width * res * res
    peak = max(peak, held + c_h * res * res + _attention(c_h, res * res, attention_scores))
    for i in reversed(range(len(widths))):  # the up path: h beside [h, skip] and the block's own
        attention = res in model.attn_resolutions
        for _ in range(model.num_res_blocks + 1):
            c_skip, pixels = skips.pop()
            held -= c_skip * pixels
            c_in = c_h + c_skip
            peak = max(peak, held + (c_h + c_in + _resnet_temporaries(c_in, widths[i])) * pixels)
            c_h = widths[i]
            if attention:
                peak = max(peak, held + _attention(c_h, pixels, attention_scores))
        if i != 0:
            peak = max(peak, held + c_h * (res * res + 8 * res * res))  # h, nearest x2, conv
            res *= 2
    peak = max(peak, 3 * c_h * res * res)  # norm_out, swish, conv_out
    return batch * bytes_per_value * peak


def _attention(channels: int, pixels: int, scores: bool) -> int:
    """Values an attention block holds beside its input: its output, the normalised input, q, k,
    v, the attention's output and its reshaped copy (7 per channel and pixel), and the scores."""
    return 7 * channels * pixels + (pixels * pixels if scores else 0)


def _resnet_temporaries(c_in: int, c_out: int) -> int:
    """Values per pixel a residual block holds beside its input: its normalised input and
    swish (2 c_in), swish and conv1 (c_in + c_out), or h, swish, conv2 / shortcut, sum (3 c_out)."""
    return max(2 * c_in, c_in + c_out, 3 * c_out)


def device_memory_bytes(device: str | torch.device = "cpu") -> int | None:
    """The memory of `device`: a GPU's own, else this machine's (None where it cannot be read)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    from ddim.files import npz

    return npz.memory_bytes()


def check_activations_fit(
    model: ModelConfig,
    image_size: int,
    *,
    batch: int = 1,
    bytes_per_value: int = 4,
    attention_scores: bool = True,
    device: str | torch.device = "cpu",
    source: str = "the network",
) -> None:
    """Refuse, before any work, a network whose activations cannot fit in `device`'s memory
    (`activation_bytes`, whose arguments these are): for one image, naming the image size (no
    batch size can help); for `batch` images, naming the batch and how many fit. With
    `bytes_per_value=2, attention_scores=False` (bf16 in channels-last, the leanest arithmetic
    the package runs) it is a lower bound: what it refuses could not run at any precision."""
    total = device_memory_bytes(device)
    if total is None:
        return
    one = activation_bytes(model, image_size, 1, bytes_per_value,
                           attention_scores=attention_scores)
    if one > total:
        raise DdimError(
            f"{source} runs at {image_size}x{image_size} px: one image's activations need at "
            f"least {_gib(one)} GiB, more than the {_gib(total)} GiB of memory of "
            f"{torch.device(device)}; it is the image size (data.image_size={image_size}), not "
            "the batch size: a batch of 1 does not fit either"
        )
    if batch * one > total:
        raise DdimError(
            f"batch={batch} of {image_size}x{image_size} px images needs at least "
            f"{_gib(batch * one)} GiB of activations, more than the {_gib(total)} GiB of "
            f"memory of {torch.device(device)}; at most {total // one} fit",
            argument="batch",
        )


def _gib(nbytes: int) -> str:
    """Bytes in GiB to 3 digits; a forged size too large for a float as a power of 2."""
    if nbytes.bit_length() > 1000:
        return f"2^{nbytes.bit_length() - 31}"
    return f"{nbytes / 2**30:.3g}"


def check_finite(checkpoint: Checkpoint) -> None:
    """Raise a DdimError naming the first weight that holds NaN or infinity (it would sample
    black or garbage images)."""
    for what, state in (("weights", checkpoint.model_state), ("EMA weights", checkpoint.ema_state)):
        for key, tensor in (state or {}).items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise DdimError(
                    f"{str(checkpoint.path)!r}: the {what} hold NaN or infinite values "
                    f"(first in {key}); refusing to sample or train from them"
                )


def load_weights_only(path: Path, source: Any = None) -> Any:
    """torch.load with weights_only=True; unsafe or unreadable files become DdimErrors."""
    try:
        return torch.load(source or path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise DdimError(
            f"refusing to load {str(path)!r}: it holds objects other than tensors and plain "
            f"containers, which could run code ({first_line(error)})"
        ) from None
    except Exception as error:
        raise DdimError(f"{str(path)!r} is damaged or truncated: {first_line(error)}") from None


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
