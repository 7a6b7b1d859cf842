"""The network a sampling run calls: a checkpoint's weights as an ε-model on a device, in the
precision asked for, and what identifies them in the records of the outputs they make."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ddim.checkpoint import (
    checkpoint_sha256,
    config_for_foreign,
    load_checkpoint,
    model_from_checkpoint,
    provenance,
)
from ddim.checkpoint.named import BUNDLED_NAME
from ddim.config import Config
from ddim.diffusion.eps_model import EpsModel
from ddim.network.precision import Precision, describe, eps_model_for, named_precision


@dataclass(frozen=True)
class SamplingModel:
    """A checkpoint ready to sample: the ε-model, its config, where and how it runs, and what ran
    (the checkpoint as named; its provenance: kind, which weights, where the config came from)."""

    eps_model: EpsModel
    config: Config
    device: torch.device
    precision: Precision
    checkpoint: str
    provenance: dict[str, str]

    def settings(self) -> dict:
        """What decides the model's outputs, for output records: weights (by hash), which weights
        and where the config came from (`provenance`, without the note that names the file), the
        config, the arithmetic. Not the path (a moved file is the same model), the device, nor
        whether torch.compile ran the network: it computes the same function in another order of
        sums (float32 rounding, as another batch size does), so a compiled run's images are
        continued by an uncompiled one and back. `record` says whether it ran compiled."""
        arithmetic = replace(self.precision, compile=False)
        return {
            "checkpoint_sha256": checkpoint_sha256(self.checkpoint),
            "provenance": {k: v for k, v in self.provenance.items() if k != "inferred"},
            "precision": describe(arithmetic),
            "config": self.config.to_dict(),
        }

    def record(self) -> dict:
        """What identifies the model run: checkpoint and hash, its provenance, device,
        arithmetic, layout and compilation."""
        return {
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": checkpoint_sha256(self.checkpoint),
            "provenance": self.provenance,
            "device": str(self.device),
            "precision": describe(self.precision),
            "beta_schedule": self.config.diffusion.beta_schedule,
            "num_diffusion_timesteps": self.config.diffusion.num_diffusion_timesteps,
        }

    @property
    def weights(self) -> str:
        """Which weights run: "ema", "raw" or "unlabelled" (`Checkpoint.weights_label`)."""
        return self.provenance["weights"]


def load_sampling_model(
    ckpt: str | Path | None = None,
    *,
    config: Config | str | None = None,
    raw: bool = False,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    compile: bool = False,
) -> SamplingModel:
    """The checkpoint `ckpt` (default: the bundled model) as a SamplingModel. `config` is for
    weights that carry none (a recorded config it differs from is refused); the EMA weights are
    used unless `raw` or the config's `model.ema` is false (raw weights a file does not hold are
    refused); `precision` is a name of `ddim.network.precision.named_precision`."""
    ckpt = str(ckpt or BUNDLED_NAME)  # recorded as given: a name, or the user's path
    device = torch.device(device)
    checkpoint = load_checkpoint(ckpt, config=config)
    config = config_for_foreign(checkpoint)
    use_ema = not raw and config.model.ema
    record = provenance(checkpoint, use_ema=use_ema)  # refuses raw weights the file lacks
    net = model_from_checkpoint(checkpoint, use_ema=use_ema, device=device)
    chosen = named_precision(precision, device, compile=compile)
    return SamplingModel(eps_model_for(net, chosen), config, device, chosen, ckpt, record)
