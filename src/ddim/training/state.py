"""A run's state on disk: where a run starts from (fresh, resumed exactly, or warm-started), and
the checkpoint that holds everything needed to continue it.

A checkpoint's training state holds the optimiser, the noise generator, the global RNG (dropout),
the step, the images seen, and the CPU and wall-clock seconds spent, from which the data order
and the schedule's progress follow; its metadata records the weights' lineage (images seen, CPU
hours, the warm start the run began from), so a file that leaves its run still says where it
came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ddim.checkpoint import load_checkpoint, save_checkpoint
from ddim.config import Config
from ddim.errors import DdimError
from ddim.files import write_text
from ddim.training.log import lineage_cpu_hours
from ddim.training.recipe import TrainState, init_training
from ddim.training.run_dir import latest_checkpoint, prune_checkpoints
from ddim.training.warm_start import INIT_RECORD, load_init_checkpoint, warm_start


@dataclass(frozen=True)
class Started:
    """A run's starting point: its state, the CPU and wall seconds already spent on it, the warm
    start its weights came from (or None), and the checkpoint it resumed (or None)."""

    state: TrainState
    cpu_seconds: float = 0.0
    elapsed: float = 0.0
    origin: dict | None = None
    resumed: Path | None = None


def start_state(
    config: Config,
    device: torch.device,
    *,
    resume: str | Path | None = None,
    init: str | Path | None = None,
    channels_last: bool = False,
) -> Started:
    """The state a run starts from: fresh (step 0), resumed exactly from a checkpoint or run
    directory, or warm-started from another checkpoint's weights (`init`)."""
    if resume is not None and init is not None:
        raise DdimError("resume and init exclude each other: a resumed run has its own weights")
    state = init_training(config, device, channels_last=channels_last)
    if resume is not None:
        path = latest_checkpoint(resume)
        return _restore(path, state, config)
    if init is not None:
        return Started(state, origin=warm_start(state, load_init_checkpoint(init, config)))
    return Started(state)


def write_init_record(run_dir: Path, origin: dict) -> None:
    """Record in the run directory the checkpoint a warm start began from."""
    write_text(run_dir / INIT_RECORD, json.dumps(origin, indent=2) + "\n")


def save_state(
    run_dir: Path,
    config: Config,
    state: TrainState,
    *,
    cpu_seconds: float,
    elapsed: float,
    origin: dict | None,
    keep: int,
) -> Path:
    """Write an atomic checkpoint with the full training state; keep the `keep` highest steps.
    `cpu_seconds` are the run's (every process, every invocation), `elapsed` its wall seconds."""
    step = state.step
    if not all(torch.isfinite(p).all() for p in state.net.parameters()):
        raise DdimError(f"non-finite weights at step {step}; not overwriting earlier checkpoints")
    train_state = {
        "optimizer": state.optimizer.state_dict(),
        "generator": state.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "step": step,
        "images": state.images,
        "cpu_seconds": float(cpu_seconds),
        "elapsed_seconds": float(elapsed),
        "origin": origin,
    }
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(
        folder / f"ckpt-{step:08d}.safetensors",
        model_state=state.net.state_dict(),
        ema_state=state.ema.state_dict(),
        config=config,
        step=step,
        train_state=train_state,
        extra_meta=_lineage(state, cpu_seconds, origin),
    )
    prune_checkpoints(run_dir, keep)
    return path


def _lineage(state: TrainState, cpu_seconds: float, origin: dict | None) -> dict:
    """What a checkpoint says of its weights' history: images seen, CPU hours (the warm start's
    included where it recorded them: `ddim.training.log.METRICS`), and the warm start itself."""
    hours = lineage_cpu_hours((origin or {}).get("cpu_hours"), cpu_seconds)
    return {"images_seen": state.images, "cpu_hours": hours, "init": origin}


def _restore(path: Path, state: TrainState, config: Config) -> Started:
    """Load weights, EMA and training state from `path` into `state`."""
    checkpoint = load_checkpoint(path)
    saved = checkpoint.load_train_state()
    if saved is None:
        raise DdimError(f"{path} holds no training state to resume from")
    state.net.load_state_dict(checkpoint.model_state)
    state.ema.load_state_dict(checkpoint.ema_state or checkpoint.model_state)
    state.optimizer.load_state_dict(saved["optimizer"])
    state.generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    state.step = int(saved["step"])
    # checkpoints written before the counter existed: every step had the recorded batch
    recorded_batch = checkpoint.config.training.batch_size
    state.images = int(saved.get("images", state.step * recorded_batch))
    return Started(
        state,
        cpu_seconds=float(saved.get("cpu_seconds", 0.0)),
        elapsed=float(saved.get("elapsed_seconds", 0.0)),
        origin=saved.get("origin"),
        resumed=path,
    )
