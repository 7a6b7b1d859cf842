"""What an invocation of a run will do, settled before any work (`plan_run`): a resumed run is
the same run.

A run is its config (in every checkpoint) and its `RunOptions` (in the run record, `RUN/run.json`):
the arithmetic (bf16 autocast or float32), the time budget, and the cadence of checkpoints,
samples and logs. A resume restores both from the run it continues (for a branch, the record of
the run directory the checkpoint lies in, as it stood at the checkpoint's step). A setting given
anew that differs from the recorded one is a change: applied, printed as a note, and recorded in
the run record with the step it was made at. Two kinds of change are refused instead:

- the network, the schedule and the image size (`FIXED_ON_RESUME`): the weights are theirs;
- any change of the learning rate's shape (`time_budget`, `training.n_iters`,
  `training.lr_decay_fraction`, `training.warmup`) that would move the rate at the step the run
  resumes from. A budget or length given anew while the rate is flat (stable phase, or no decay)
  is applied: the decay takes the last share of the new length. Once the decay has begun a new
  length would make the rate jump, up for a longer one (a decayed rate warmed again, which
  undoes the decay's gain) or down for a shorter one, so it is refused; a decayed run is trained
  further as a new run from its weights (`init`), which warms its own rate up. A new peak rate
  (`training.lr`) is a deliberate change of the rate, and is applied as a change.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ddim.checkpoint import load_checkpoint
from ddim.config import Config
from ddim.device import native_bf16
from ddim.errors import DdimError
from ddim.training.recipe import Schedule, run_progress
from ddim.training.run_dir import (
    RunOptions,
    latest_checkpoint,
    options_in_force,
    read_run_record,
)
from ddim.training.warm_start import load_init_checkpoint

# What a resumed run keeps from its checkpoint: the network, the schedule, the image size.
FIXED_ON_RESUME = ("model", "diffusion", "data.image_size", "data.channels")
# The settings that shape the learning rate over the run (besides its peak, `training.lr`).
RATE_SHAPE = ("time_budget", "training.n_iters", "training.lr_decay_fraction", "training.warmup")


@dataclass(frozen=True)
class RunPlan:
    """What an invocation of a run does, settled before any work.

    options        the run's options: restored from the record, given anew, or the defaults
    step           the step it starts from (0 for a new run)
    changes        the settings it changes against the recorded run, each
                   {"step", "setting", "recorded", "given"}
    history        what the run record will hold: the record's changes up to `step`, then these
    branched_from  the checkpoint a branch continues ({"checkpoint", "step"}), or None
    """

    options: RunOptions
    step: int = 0
    changes: tuple[dict, ...] = ()
    history: tuple[dict, ...] = ()
    branched_from: dict | None = None

    def notes(self) -> list[str]:
        """One line per change, as the run prints them."""
        return [f"{c['setting']} changes from {_shown(c['setting'], c['recorded'])} (recorded) "
                f"to {_shown(c['setting'], c['given'])} at step {c['step']}; the run record "
                "(run.json) keeps the change" for c in self.changes]  # fmt: skip


def plan_run(
    config: Config,
    run_dir: Path | None,
    *,
    device: torch.device,
    resume: str | Path | None = None,
    init: str | Path | None = None,
    **given,
) -> RunPlan:
    """Check a run before it works, and settle what it does: `init` against the config, and for
    a resume the run record and the config against the checkpoint's (see the module docstring).
    `given` holds the `RunOptions` fields passed (None: not given); `run_dir` is where the run
    writes (None: a new folder). Reads the checkpoints, writes nothing."""
    if resume is not None and init is not None:
        raise DdimError("resume and init exclude each other: a resumed run has its own weights")
    if init is not None:
        load_init_checkpoint(init, config)
    snapshot = given.get("checkpoint_every") or config.training.snapshot_freq
    default = RunOptions(checkpoint_every=snapshot, sample_every=snapshot,
                         amp=native_bf16(device))  # fmt: skip
    given = {key: value for key, value in given.items() if value is not None}
    if resume is None:
        return RunPlan(RunOptions(**(dataclasses.asdict(default) | given)))
    return _plan_resume(config, run_dir, latest_checkpoint(resume), default, given)


def _plan_resume(config: Config, run_dir: Path | None, path: Path, default: RunOptions,
                 given: dict) -> RunPlan:  # fmt: skip
    """The plan of a run continued from the checkpoint at `path`."""
    checkpoint = load_checkpoint(path)
    saved = checkpoint.load_train_state()
    step, elapsed = int(saved["step"]), float(saved.get("elapsed_seconds", 0.0))
    source = path.parent.parent if path.parent.name == "checkpoints" else None
    record = read_run_record(source)
    recorded = options_in_force(record, step)
    options = RunOptions(**(dataclasses.asdict(default) | recorded | given))
    changes = [_change(step, key, recorded[key], value) for key, value in given.items()
               if key in recorded and recorded[key] != value]  # fmt: skip
    changes += _config_changes(checkpoint.config, config, step)
    _refuse_fixed(changes)
    budgets = (recorded.get("time_budget"), options.time_budget)
    _refuse_rate_jump(checkpoint.config, config, budgets, step, elapsed, changes)
    earlier = [c for c in record.get("changes", []) if c["step"] <= step]
    in_place = run_dir is None or source is not None and _same(source, run_dir)
    branched = (record.get("branched_from") if in_place
                else {"checkpoint": str(path.resolve()), "step": step})  # fmt: skip
    return RunPlan(options, step, tuple(changes), tuple(earlier + changes), branched)


def _change(step: int, setting: str, recorded, given) -> dict:
    """A change entry of the run record."""
    return {"step": step, "setting": setting, "recorded": recorded, "given": given}


def _config_changes(recorded: Config, given: Config, step: int) -> list[dict]:
    """The config keys whose value `given` changes against the checkpoint's `recorded` config."""
    old, new = recorded.to_dict(), given.to_dict()
    return [_change(step, f"{section}.{key}", old[section][key], value)
            for section, values in new.items() for key, value in values.items()
            if value != old[section][key]]  # fmt: skip


def _refuse_fixed(changes: list[dict]) -> None:
    """Refuse a change of the network, the schedule or the image size."""
    for c in changes:
        if c["setting"].startswith(FIXED_ON_RESUME):
            raise DdimError(
                f"{c['setting']}={c['given']} would change the resumed run's {c['setting']} "
                f"({c['recorded']}): its weights and schedule are fixed by its checkpoint; start "
                "a new run to change it"
            )


def _refuse_rate_jump(before: Config, after: Config, budgets: tuple, step: int, elapsed: float,
                      changes: list[dict]) -> None:  # fmt: skip
    """Refuse changes of the rate's shape that move the rate of the next update, as a share of
    its peak (a new peak is a change of its own)."""
    shares = []
    for config, budget in zip((before, after), budgets):
        schedule = Schedule.from_config(config)
        progress = run_progress(step, config.training.n_iters, elapsed, budget)
        shares.append(schedule.learning_rate(step, progress) / schedule.lr)
    if math.isclose(*shares, rel_tol=1e-9, abs_tol=1e-12):
        return
    c = next(c for c in changes if c["setting"] in RATE_SHAPE)
    name, direction = c["setting"], "raise" if shares[1] > shares[0] else "lower"
    decayed = " (its decay had begun)" if shares[0] < 1 and step >= before.training.warmup else ""
    raise DdimError(
        f"{name} {_shown(name, c['given'])} would {direction} the learning rate of the resumed "
        f"run at step {step} from {shares[0]:.3g} to {shares[1]:.3g} of its peak{decayed}; the "
        f"run's {name} is {_shown(name, c['recorded'])}: resume with that, or train its weights "
        "further as a new run with init (--init), which warms its own rate up",
        argument=name if name == "time_budget" else None,
    )


def _shown(setting: str, value) -> str:
    """A setting's value as the notes and errors show it (a time budget in seconds)."""
    if setting == "time_budget" and value is not None:
        return f"{value:g} s"
    return str(value)


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name the same folder."""
    return a.resolve() == Path(b).resolve()
