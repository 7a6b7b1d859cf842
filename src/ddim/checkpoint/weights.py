"""What a checkpoint holds, whatever file it came from, and the checks every loader shares:
weights fit the U-Net a config describes and are finite, pickles are opened without running
code.

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


def check_weights_fit(state: dict, model: ModelConfig, image_size: int, source: str) -> None:
    """Raise a DdimError unless `state` has exactly the U-Net's keys and shapes."""
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
