"""Run directories: where a run writes, how it is found again, and which checkpoint it resumes.

    RUN/config.yml                 the resolved config
    RUN/run.json                   the run record: the settings outside its config
                                   (`RunOptions`), the changes a resume made to them or to the
                                   config, and where it branched from (`ddim.training.resume`)
    RUN/init.json                  the checkpoint a warm start began from (`warm_start`)
    RUN/checkpoints/ckpt-<step>.*  checkpoints (`ddim.checkpoint.format`), the newest few kept
    RUN/samples/step-<step>.png    sample grids of the EMA model
    RUN/metrics.jsonl              one line per logging interval, steps increasing
    RUN/.lock                      held by the one training that writes the run (`claim_run_dir`)

A run directory belongs to one run, and holds one line of checkpoints: a training that would
start afresh in a folder that already holds checkpoints is refused (`--resume` continues them,
`--overwrite` deletes them first); continuing from a checkpoint older than the run's newest would
overwrite and prune the later ones, so it is refused there and done in a new run directory (a
branch, which records where it came from); two trainings cannot write one folder at once.
Checkpoints are ordered by their step, for resuming and for pruning alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ddim.checkpoint import load_checkpoint, remove_checkpoint
from ddim.checkpoint.named import checkpoint_step, run_checkpoints
from ddim.errors import DdimError
from ddim.files import folder_lock, write_text

RUN_RECORD = "run.json"
RUN_OUTPUTS = (
    "checkpoints", "samples", "tensorboard", "metrics.jsonl", "config.yml", RUN_RECORD, "init.json"
)


@dataclass(frozen=True)
class RunOptions:
    """The settings of a run that its config does not hold. The run record keeps them, and a
    resume restores them (`ddim.training.resume`): given anew, each is a change the record names,
    or, where the learning rate would jump, refused.

    Arithmetic and schedule:
    amp               bf16 autocast for the network's forward pass (False: float32)
    time_budget       seconds of training the run may take over all its invocations, or None;
                      with `training.lr_decay_fraction` the rate decays over its last share
    How the run is carried out (nothing here changes what a step computes):
    checkpoint_every  steps between checkpoints
    keep              checkpoints kept on disk, the highest steps
    sample_every      steps between sample grids of the EMA model (0: none)
    log_every         steps between metric lines (and non-finite-loss checks)
    """

    checkpoint_every: int
    keep: int = 3
    sample_every: int = 0
    log_every: int = 100
    time_budget: float | None = None
    amp: bool = False

    def __post_init__(self):
        for name, least in (("checkpoint_every", 1), ("keep", 1), ("sample_every", 0),
                            ("log_every", 1)):  # fmt: skip
            if getattr(self, name) < least:
                raise DdimError(f"{name} must be >= {least}, got {getattr(self, name)}",
                                argument=name)  # fmt: skip
        if self.time_budget is not None and not self.time_budget > 0:
            raise DdimError(f"time_budget must be > 0 seconds, got {self.time_budget}",
                            argument="time_budget")  # fmt: skip


def read_run_record(run_dir: Path | None) -> dict:
    """The run record of `run_dir` (`run.json`): {"options", "changes", "branched_from"}, or {}
    where there is none."""
    if run_dir is None or not (run_dir / RUN_RECORD).is_file():
        return {}
    return json.loads((run_dir / RUN_RECORD).read_text(encoding="utf-8"))


def options_in_force(record: dict, step: int) -> dict:
    """The options a run record held at `step`: its options with the changes made after `step`
    undone, newest first (a branch from an older checkpoint takes the options of its step)."""
    options = dict(record.get("options", {}))
    for change in reversed(record.get("changes", [])):
        if change["step"] > step and change["setting"] in options:
            options[change["setting"]] = change["recorded"]
    return options


def write_run_record(run_dir: Path, options: RunOptions, changes: list[dict],
                     branched_from: dict | None) -> None:  # fmt: skip
    """Write the run record: the options in force, every change made to the run on resume
    ({"step", "setting", "recorded", "given"}, oldest first), and the checkpoint a branch began
    from."""
    record = {"options": dataclasses.asdict(options), "changes": changes,
              "branched_from": branched_from}  # fmt: skip
    write_text(run_dir / RUN_RECORD, json.dumps(record, indent=2) + "\n")


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` highest-step checkpoints of a run (and their training state)."""
    found = run_checkpoints(run_dir)
    removed = found[: max(len(found) - keep, 0)]
    for path in removed:
        remove_checkpoint(path)
    return removed


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
        _check_resumable(path)
        return path
    if not path.is_dir():
        raise DdimError(f"nothing to resume at {path}: neither a run directory nor a checkpoint")
    for candidate in reversed(run_checkpoints(path)):
        try:
            load_checkpoint(candidate).load_train_state()
            return candidate
        except DdimError as error:
            print(f"skipping unreadable checkpoint {candidate}: {error}", file=sys.stderr)
    raise DdimError(f"no complete checkpoint to resume from in {path / 'checkpoints'}")


def _check_resumable(path: Path) -> None:
    """Refuse, in one line, a file that holds no training state (an official `ckpt.pth`, bare
    weights, a converted file): it can start a new run with `init`, not be resumed."""
    checkpoint = load_checkpoint(path)
    if checkpoint.config is None or checkpoint.load_train_state() is None:
        raise DdimError(
            f"{path} holds no training state of ours (optimiser, step, noise generator), so it "
            "cannot be resumed exactly; start a new run from its weights with init (--init)"
        )


@contextlib.contextmanager
def claim_run_dir(
    run_dir: str | Path, resume: str | Path | None = None, overwrite: bool = False
) -> Iterator[None]:
    """Hold `run_dir` for one training: locked against a second one, and refused if it holds
    checkpoints of a run that `resume` does not continue (unless `overwrite`, which deletes
    the earlier run's files first)."""
    run_dir = Path(run_dir)
    with folder_lock(run_dir / ".lock", f"run directory {run_dir}"):
        check_run_dir(run_dir, resume, overwrite)
        if overwrite and run_checkpoints(run_dir):
            _delete_run_outputs(run_dir)
        yield


def check_run_dir(
    run_dir: str | Path, resume: str | Path | None = None, overwrite: bool = False
) -> None:
    """Refuse what `claim_run_dir` refuses (a folder holding checkpoints of a run that `resume`
    does not continue, a rollback in place), taking no lock and changing nothing."""
    run_dir = Path(run_dir)
    found = run_checkpoints(run_dir)
    continued = resume is not None and _same_run(latest_checkpoint(resume), run_dir)
    if continued and not overwrite:
        _refuse_rollback(latest_checkpoint(resume), found, run_dir)
    if found and not continued and not overwrite:
        hint = f"pass --resume {run_dir} to continue it"
        if resume is not None:
            hint = f"--resume {resume} continues another run"
        raise DdimError(
            f"run directory {run_dir} already holds checkpoints (newest {found[-1].name}); "
            f"{hint}, --overwrite deletes them, or choose another --run-dir"
        )


def _refuse_rollback(source: Path, found: list[Path], run_dir: Path) -> None:
    """Refuse to continue a run from a checkpoint behind its newest: the later checkpoints of the
    abandoned line would be overwritten and pruned."""
    newest = found[-1] if found else None
    if newest is not None and checkpoint_step(source) < checkpoint_step(newest):
        raise DdimError(
            f"{source.name} is behind the newest checkpoint of {run_dir} ({newest.name}): "
            "continuing from it here would overwrite and prune the later ones; continue it in "
            "a new run directory (--run-dir NEW), which records the branch"
        )


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
