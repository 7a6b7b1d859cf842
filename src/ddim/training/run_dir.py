"""Run directories: where a run writes, how it is found again, and which checkpoint it resumes.

    RUN/config.yml                 the resolved config
    RUN/checkpoints/ckpt-<step>.*  checkpoints (`ddim.checkpoint.format`), the newest few kept
    RUN/samples/step-<step>.png    sample grids of the EMA model
    RUN/metrics.jsonl              one line per logging interval
    RUN/.lock                      held by the one training that writes the run (`claim_run_dir`)

A run directory belongs to one run: a training that would start afresh in a folder that already
holds checkpoints is refused (`--resume` continues them, `--overwrite` deletes them first), and
two trainings cannot write one folder at the same time.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from ddim.checkpoint import load_checkpoint
from ddim.errors import DdimError
from ddim.files import folder_lock

CHECKPOINT_GLOB = "ckpt-*.safetensors"
RUN_OUTPUTS = ("checkpoints", "samples", "tensorboard", "metrics.jsonl", "config.yml")


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


@contextlib.contextmanager
def claim_run_dir(
    run_dir: str | Path, resume: str | Path | None = None, overwrite: bool = False
) -> Iterator[None]:
    """Hold `run_dir` for one training: locked against a second one, and refused if it holds
    checkpoints of a run that `resume` does not continue (unless `overwrite`, which deletes
    the earlier run's files first)."""
    run_dir = Path(run_dir)
    with folder_lock(run_dir / ".lock", f"run directory {run_dir}"):
        found = sorted((run_dir / "checkpoints").glob(CHECKPOINT_GLOB))
        continued = resume is not None and _same_run(latest_checkpoint(resume), run_dir)
        if found and overwrite:
            _delete_run_outputs(run_dir)
        elif found and not continued:
            hint = f"pass --resume {run_dir} to continue it"
            if resume is not None:
                hint = f"--resume {resume} continues another run"
            raise DdimError(
                f"run directory {run_dir} already holds checkpoints (newest {found[-1].name}); "
                f"{hint}, --overwrite deletes them, or choose another --run-dir"
            )
        yield


def _delete_run_outputs(run_dir: Path) -> None:
    """Delete what an earlier training wrote into `run_dir` (nothing else there)."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _same_run(checkpoint: Path, run_dir: Path) -> bool:
    """Whether a checkpoint file lies in `run_dir/checkpoints`."""
    return checkpoint.resolve().parent == (run_dir / "checkpoints").resolve()
