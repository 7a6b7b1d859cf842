"""Warm starts: a new run that begins from another checkpoint's weights (fine-tuning, or the
bundled model continuing on a machine that has none of its run files).

The new run takes the checkpoint's network weights and its EMA weights (a file holding one set,
such as the bundled float16 EMA weights, gives both), and nothing else: the optimiser, the noise
generator and the step start afresh under the new run's own config, whose network must be the
checkpoint's. Any kind `ddim.checkpoint.load_checkpoint` reads will do: ours, the bundled file,
the official `ckpt.pth`, bare state_dicts, diffusers folders.

What the run started from is recorded (`init_record`): in `RUN/init.json` and in every
checkpoint the run writes, with the images its weights had already seen, so that counters and
the EMA's ramp-up continue the lineage instead of restarting at zero.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from ddim.checkpoint import Checkpoint, load_checkpoint
from ddim.checkpoint.load import checkpoint_name
from ddim.config import Config
from ddim.errors import DdimError
from ddim.training.recipe import TrainState

INIT_RECORD = "init.json"
# The model keys that decide the network's function; dropout and the EMA settings may change.
ARCHITECTURE = (
    "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "attn_resolutions",
    "resamp_with_conv", "num_groups",
)


def load_init_checkpoint(path: str | Path, config: Config) -> Checkpoint:
    """Read `path` (any checkpoint kind) and check that its network is the one `config` builds."""
    checkpoint = load_checkpoint(path)
    difference = _first_difference(checkpoint, config)
    if difference is not None:
        raise DdimError(
            f"cannot start from {path}: its network differs from the config's "
            f"({difference}); train with the checkpoint's own "
            "model section, or start from weights of this network"
        )
    return checkpoint


def warm_start(state: TrainState, checkpoint: Checkpoint) -> dict[str, Any]:
    """Copy the checkpoint's weights into `state` (network and EMA, as float32); return the
    record of where the run starts from."""
    model_state = checkpoint.model_state
    ema_state = checkpoint.ema_state if checkpoint.ema_state is not None else model_state
    with torch.no_grad():
        state.net.load_state_dict(model_state, strict=True)
        state.ema.load_state_dict(ema_state, strict=True)
    record = init_record(checkpoint)
    state.images = record["images_seen"]
    return record


def init_record(checkpoint: Checkpoint) -> dict[str, Any]:
    """Where a warm start comes from: path (`bundled`, or as given), kind, file hash, step, and
    the images (and CPU hours, where recorded) its weights had seen."""
    return {
        "path": checkpoint_name(checkpoint.path),
        "kind": checkpoint.kind,
        "sha256": _file_sha256(Path(checkpoint.path)),
        "step": checkpoint.step,
        "images_seen": checkpoint.images_seen or 0,
        "cpu_hours": checkpoint.cpu_hours,
        "weights": "network and EMA" if checkpoint.ema_state is not None else "one set (both)",
    }


def _first_difference(checkpoint: Checkpoint, config: Config) -> str | None:
    """The first architecture key (or the image size) in which a checkpoint and a config
    differ, as text, or None."""
    if checkpoint.image_size != config.data.image_size:
        return f"data.image_size {checkpoint.image_size} against {config.data.image_size}"
    for key in ARCHITECTURE:
        theirs, mine = getattr(checkpoint.model_config, key), getattr(config.model, key)
        if theirs != mine:
            return f"model.{key} {theirs!r} in the checkpoint against {mine!r}"
    return None


def _file_sha256(path: Path) -> str | None:
    """SHA-256 of a checkpoint file (None for a folder, such as a diffusers checkpoint)."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
