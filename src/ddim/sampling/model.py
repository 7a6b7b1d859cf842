"""The network a sampling run calls: a checkpoint's weights as an ε-model on a device, in the
precision asked for, and what identifies them in the records of the outputs they make."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ddim.checkpoint import (
    bundled_checkpoint,
    checkpoint_sha256,
    config_for_foreign,
    load_checkpoint,
    model_from_checkpoint,
)
from ddim.config import Config
from ddim.diffusion.eps_model import EpsModel
from ddim.network.precision import Precision, describe, eps_model_for, named_precision


@dataclass(frozen=True)
class SamplingModel:
    """A checkpoint ready to sample: the ε-model, its config, where and how it runs, and which
    weights it holds (the checkpoint as named; EMA or raw)."""

    eps_model: EpsModel
    config: Config
    device: torch.device
    precision: Precision
    checkpoint: str
    ema: bool

    def settings(self) -> dict:
        """What decides the model's outputs, for output records: weights (by hash), EMA or raw,
        the config, the arithmetic. Not the path (a moved file is the same model) nor the
        device."""
        return {
            "checkpoint_sha256": checkpoint_sha256(self.checkpoint),
            "weights": self.weights,
            "precision": describe(self.precision),
            "config": self.config.to_dict(),
        }

    def record(self) -> dict:
        """What identifies the model run: checkpoint and hash, EMA or raw, device, arithmetic."""
        return {
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": checkpoint_sha256(self.checkpoint),
            "weights": self.weights,
            "device": str(self.device),
            "precision": describe(self.precision),
            "beta_schedule": self.config.diffusion.beta_schedule,
            "num_diffusion_timesteps": self.config.diffusion.num_diffusion_timesteps,
        }

    @property
    def weights(self) -> str:
        """"ema" or "raw"."""
        return "ema" if self.ema else "raw"


def load_sampling_model(
    ckpt: str | Path | None = None,
    *,
    config: Config | str | None = None,
    raw: bool = False,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    compile: bool = False,
) -> SamplingModel:
    """The checkpoint `ckpt` (default: the bundled model) as a SamplingModel. `config` replaces
    the one it carries (or gives one to weights that carry none); its EMA weights are used unless
    `raw` or its config's `model.ema` is false; `precision` is a name of
    `ddim.network.precision.named_precision`."""
    ckpt = str(ckpt or bundled_checkpoint())
    device = torch.device(device)
    checkpoint = load_checkpoint(ckpt, config=config)
    config = config_for_foreign(checkpoint)
    ema = not raw and config.model.ema
    net = model_from_checkpoint(checkpoint, use_ema=ema, device=device)
    chosen = named_precision(precision, device, compile=compile)
    return SamplingModel(eps_model_for(net, chosen), config, device, chosen, ckpt, ema)
