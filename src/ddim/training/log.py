"""What a run reports as it goes: a progress bar, `metrics.jsonl` and (if installed) TensorBoard,
written on rank 0 only; the one place the metrics are defined (`METRICS`).

A metric means the same in every place it appears (the metrics file, TensorBoard, the
checkpoints' metadata) and on any number of processes: under `torchrun` the loss is the global
batch's and the CPU time every process's, gathered from all ranks at each line. TensorBoard is
optional: a writer that fails is a one-line warning, and the metrics file goes on.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from ddim.errors import DdimError
from ddim.files import write_text
from ddim.progress import progress_bar

# The fields of a metrics line (and of TensorBoard's `train/` scalars), in this order.
METRICS = {
    "step": "steps taken; the line covers the steps since the previous line",
    "loss": "mean training loss over those steps and the global batch (every process's share)",
    "lr": "learning rate of the last of those steps",
    "images_per_s": "images of the global batch trained per second over those steps",
    "images_seen": "images the weights have seen, the runs they were warm-started from included",
    "cpu_hours": "CPU hours spent on the weights: those the warm start's checkpoint recorded, "
                 "plus this run's (`run_cpu_hours`); the number its checkpoints record",
    "run_cpu_hours": "CPU hours of this run alone: every process, every invocation (resumes)",
}


def lineage_cpu_hours(hours_before: float | None, run_cpu_seconds: float) -> float:
    """`cpu_hours`: the CPU hours of a warm start's weights (None: none, or not recorded) plus a
    run's CPU seconds."""
    return (hours_before or 0.0) + run_cpu_seconds / 3600


class TrainLog:
    """Progress bar, metrics.jsonl and TensorBoard for one run, on rank 0 (`active`) only."""

    def __init__(
        self, run_dir: Path, batch_size: int, active: bool, progress: bool, start, end, cpu=0.0,
        cpu_hours_before: float = 0.0, world_size: int = 1, budget: float | None = None,
        elapsed: float = 0.0,
    ):  # fmt: skip
        """`cpu` is the run's CPU seconds before this invocation (every process), and
        `cpu_hours_before` the warm start's; `world_size` the processes whose metrics are
        gathered. The bar counts steps up to `end`, or, for a run with a time budget (seconds, of
        which `elapsed` were spent before this invocation), seconds up to the budget, so its ETA
        is when the run will stop; the step is then shown beside the loss."""
        self.active, self.world_size = active, world_size
        self.batch = batch_size
        self.sum, self.count, self.lr = None, 0, 0.0
        self.time, self.mark = time.perf_counter(), start
        self.cpu_start, self.cpu_before, self.cpu_run = time.process_time(), cpu, cpu
        self.cpu_hours_before = cpu_hours_before
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

    def run_cpu_seconds(self) -> float:
        """CPU seconds of the run (every process, every invocation) as of the last line."""
        return self.cpu_run

    def flush(self, step: int, images_seen: int, stop: bool = False) -> bool:
        """Write a metrics line for the steps since the last one, and return whether any rank
        wishes to `stop` (every rank calls it at the same steps: it gathers the loss, the CPU
        time and the wish to stop of all); stop the run if the loss is not finite.
        `images_seen` counts the images the weights have seen (a warm start's included)."""
        if self.count == 0:
            return stop
        loss, stop = self._gather(self.sum / self.count, stop)
        now = time.perf_counter()
        rate = (step - self.mark) * self.batch / max(now - self.time, 1e-9)
        self.sum, self.count, self.time, self.mark = None, 0, now, step
        if not math.isfinite(loss):
            raise DdimError(f"the loss became non-finite ({loss}) before step {step}; stopping")
        if not self.active:
            return stop
        record = {
            "step": step,
            "loss": loss,
            "lr": self.lr,
            "images_per_s": rate,
            "images_seen": images_seen,
            "cpu_hours": lineage_cpu_hours(self.cpu_hours_before, self.cpu_run),
            "run_cpu_hours": self.cpu_run / 3600,
        }
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.budget is None:
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
        else:
            self.bar.set_postfix(step=step, loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
        self._to_tensorboard(record)
        return stop

    def _gather(self, mean_loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
        """The loss of the global batch (the mean of the ranks' means: their batches are equal)
        and whether any rank wishes to stop; the run's CPU seconds over all ranks go into
        `cpu_run`. One all-reduce under torchrun."""
        cpu = time.process_time() - self.cpu_start
        extra = torch.tensor([cpu, float(stop)], dtype=torch.float64, device=mean_loss.device)
        values = torch.cat([mean_loss.detach().double().reshape(1), extra])
        if self.world_size > 1:
            dist.all_reduce(values)
        loss, cpu_all, stops = values.tolist()
        self.cpu_run = self.cpu_before + cpu_all
        return loss / self.world_size, stops > 0

    def _to_tensorboard(self, record: dict) -> None:
        """The line's numbers as TensorBoard scalars; a writer that fails warns once, and goes."""
        if self.tensorboard is None:
            return
        try:
            for key in ("loss", "lr", "images_per_s", "cpu_hours", "run_cpu_hours"):
                self.tensorboard.add_scalar(f"train/{key}", record[key], record["step"])
        except OSError as error:
            _tensorboard_failed(error)
            self.tensorboard = None

    def close(self) -> None:
        """Close the files and the bar."""
        if self.active:
            self.bar.close()
            self.metrics.close()
            if self.tensorboard is not None:
                try:
                    self.tensorboard.close()
                except OSError as error:
                    _tensorboard_failed(error)


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
    """A TensorBoard writer if the package is installed and can write its folder, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    try:
        return SummaryWriter(str(run_dir / "tensorboard"))
    except OSError as error:
        _tensorboard_failed(error)
        return None


def _tensorboard_failed(error: OSError) -> None:
    """Warn, in one line, that TensorBoard logging stopped (the metrics file goes on)."""
    warnings.warn(f"no TensorBoard events in this run: {error}; metrics.jsonl holds the same "
                  "numbers", stacklevel=3)
