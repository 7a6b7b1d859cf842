"""Run directories: where a run writes, how it is found again, and which checkpoint it resumes.

    RUN/config.yml                 the resolved config
    RUN/checkpoints/ckpt-<step>.*  checkpoints (`ddim.checkpoint.format`), the newest few kept
    RUN/samples/step-<step>.png    sample grids of the EMA model
    RUN/metrics.jsonl              one line per logging interval
"""

from __future__ import annotations

import sys
from pathlib import Path

from ddim.checkpoint import load_checkpoint
from ddim.errors import DdimError

CHECKPOINT_GLOB = "ckpt-*.safetensors"


def new_run_dir(root: str | Path, name: str) -> Path:
    """A fresh `root/NNNNN-name` folder numbered after the existing ones (never reused)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[:5]) for p in root.iterdir() if p.name[:5].isdigit()]
    run_dir = root / f"{max(numbers, default=-1) + 1:05d}-{name}"
    run_dir.mkdir()
    return run_dir


def latest_checkpoint(path: str | Path) -> Path:
    """The checkpoint to resume from: `path` itself if a file, else the newest that loads."""
    path = Path(path)
    if path.is_file():
        return path
    candidates = sorted((path / "checkpoints").glob(CHECKPOINT_GLOB), reverse=True)
    for candidate in candidates:
        try:
            load_checkpoint(candidate).load_train_state()
            return candidate
        except DdimError as error:
            print(f"skipping unreadable checkpoint {candidate}: {error}", file=sys.stderr)
    raise DdimError(f"no complete checkpoint to resume from in {path / 'checkpoints'}")
