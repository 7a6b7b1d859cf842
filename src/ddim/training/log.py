"""What a run reports as it goes: a progress bar, `metrics.jsonl` and (if installed) TensorBoard,
written on rank 0 only, with the CPU hours spent on the run carried across resumes."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ddim.errors import DdimError
from ddim.files import write_text
from ddim.progress import progress_bar


class TrainLog:
    """Progress bar, metrics.jsonl and TensorBoard for one run, on rank 0 (`active`) only."""

    def __init__(
        self, run_dir: Path, batch_size: int, active: bool, progress: bool, start, end, cpu=0.0,
        budget: float | None = None, elapsed: float = 0.0,
    ):  # fmt: skip
        """The bar counts steps up to `end`, or, for a run with a time budget (seconds, of which
        `elapsed` were spent before this invocation), seconds up to the budget, so its ETA is
        when the run will stop; the step is then shown beside the loss."""
        self.active = active
        self.batch = batch_size
        self.sum, self.count, self.lr = None, 0, 0.0
        self.time, self.mark = time.perf_counter(), start
        self.cpu_start, self.cpu_before = time.process_time(), cpu
        if not active:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        _drop_lines_after(run_dir / "metrics.jsonl", start)
        self.metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.budget = budget
        if budget is None:
            self.bar = progress_bar(
                total=end, initial=start, unit="step", disable=not progress, smoothing=0.1
            )
        else:
            self.clock = time.perf_counter() - elapsed
            self.bar = progress_bar(
                total=math.ceil(budget), initial=min(int(elapsed), math.ceil(budget)),
                disable=not progress, smoothing=0.1,
                bar_format="{l_bar}{bar}| {elapsed}<{remaining} of the time budget{postfix}",
            )  # fmt: skip
        self.tensorboard = _tensorboard(run_dir)

    def add(self, step: int, loss: torch.Tensor, lr: float) -> None:
        """Accumulate a step's loss on the device (no synchronisation)."""
        self.sum = loss if self.sum is None else self.sum + loss
        self.count += 1
        self.lr = lr
        if not self.active:
            return
        if self.budget is None:
            self.bar.update(1)
        else:  # whole seconds of the budget spent so far
            spent = min(int(time.perf_counter() - self.clock), self.bar.total)
            if spent > self.bar.n:
                self.bar.update(spent - self.bar.n)

    def cpu_seconds(self) -> float:
        """CPU time of this process (all its threads) spent on the run, earlier runs included."""
        return self.cpu_before + time.process_time() - self.cpu_start

    def flush(self, step: int, images_seen: int) -> None:
        """Write the mean loss since the last flush; stop the run if it is not finite.
        `images_seen` counts the images the weights have seen (a warm start's included)."""
        if self.count == 0:
            return
        loss = (self.sum / self.count).item()
        now = time.perf_counter()
        rate = (step - self.mark) * self.batch / max(now - self.time, 1e-9)
        self.sum, self.count, self.time, self.mark = None, 0, now, step
        if not math.isfinite(loss):
            raise DdimError(f"the loss became non-finite ({loss}) before step {step}; stopping")
        if not self.active:
            return
        record = {
            "step": step,
            "loss": loss,
            "lr": self.lr,
            "images_per_s": rate,
            "images_seen": images_seen,
            "cpu_hours": self.cpu_seconds() / 3600,
        }
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.budget is None:
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
        else:
            self.bar.set_postfix(step=step, loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
        if self.tensorboard is not None:
            for key in ("loss", "lr", "images_per_s", "cpu_hours"):
                self.tensorboard.add_scalar(f"train/{key}", record[key], step)

    def close(self) -> None:
        """Close the files and the bar."""
        if self.active:
            self.bar.close()
            self.metrics.close()
            if self.tensorboard is not None:
                self.tensorboard.close()


def _drop_lines_after(path: Path, step: int) -> None:
    """Remove metric lines past `step`, which a killed run logged after its last checkpoint: the
    resumed run logs those steps again, and the file's steps stay increasing."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
    if len(kept) != len(lines):
        write_text(path, "".join(kept))


def _step_of(line: str) -> int | None:
    """The step of a metrics line, or None for a line a kill cut short."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _tensorboard(run_dir: Path):
    """A TensorBoard writer if the package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
