"""The training loop: DDPM's recipe (Ho et al. 2020, the reference trainer behind FID 3.17), run
step by step (`ddim.training.recipe.train_step`) with checkpoints, logs and exact resume.

Everything that decides the weights is in the `Config` (saved in every checkpoint) and in the
run's `RunOptions` (the arithmetic and the time budget, beside the cadence of checkpoints, samples
and logs; recorded in the run directory). `train` settles both once at its head (`plan_run`:
restored on resume, a change named and recorded or refused) and resolves them into the numbers
the steps use (`Schedule`, `Objective`, the batch per process). Runs resume exactly
(`ddim.training.state`): the data order follows from the step (`ddim.data.infinite_batches`).

Writing the sample grids and TensorBoard's events is optional work: a failure to write them is a
one-line warning, and the run goes on without them.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

from ddim.config import Config, dump_config
from ddim.data import (
    ImageDataset,
    infinite_batches,
    is_dataset_name,
    load_all,
    open_dataset,
    to_model_range,
    to_uint8,
)
from ddim.device import distributed_context
from ddim.diffusion.samplers import sample
from ddim.diffusion.schedule import alpha_bars
from ddim.errors import DdimError
from ddim.files import write_text
from ddim.images import save_grid
from ddim.network.compiled import compile_blocks
from ddim.training.log import TrainLog
from ddim.training.recipe import (
    Objective,
    Schedule,
    TrainState,
    compiled_gradient_errors,
    run_progress,
    train_step,
)
from ddim.training.resume import RunPlan, plan_run
from ddim.training.run_dir import RunOptions, claim_run_dir, write_run_record
from ddim.training.state import Started, save_state, start_state, write_init_record


class _StopFlag:
    """Set by SIGTERM/SIGINT so the loop can write a checkpoint before exiting."""

    def __init__(self):
        self.signal: int | None = None

    @contextlib.contextmanager
    def installed(self):
        """Handle SIGTERM and SIGINT inside the block (main thread only)."""
        try:
            previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        except ValueError:  # not the main thread
            previous = {}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle(self, signum, frame):
        self.signal = signum


def open_training_data(config: Config, *, fetch: bool = True) -> ImageDataset | None:
    """The configured dataset, opened: its files found, listed and checked, nothing decoded. A
    dataset name not fetched yet is left to the run (None) unless `fetch`."""
    path = config.data.path
    if path is None:
        raise DdimError("data.path is not set: pass --data PATH (a folder, zip or cifar-10 folder)")
    if not fetch and not Path(path).exists() and is_dataset_name(path):
        return None
    return open_dataset(path, subdir=config.data.subdir, resolution=config.data.image_size,
                        channels=config.data.channels)  # fmt: skip


def load_training_images(
    config: Config, *, cache_dir=None, workers: int = 0, progress: bool = True
) -> torch.Tensor:
    """The configured dataset as one uint8 tensor (N, C, H, W) on the CPU."""
    return load_all(open_training_data(config), workers=workers, progress=progress,
                    cache_dir=cache_dir)  # fmt: skip


def train(
    config: Config,
    run_dir: str | Path,
    *,
    images: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    resume: str | Path | None = None,
    init: str | Path | None = None,
    max_steps: int | None = None,
    time_budget: float | None = None,
    amp: bool | None = None,
    compile: bool = False,
    channels_last: bool = True,
    checkpoint_every: int | None = None,
    keep: int | None = None,
    sample_every: int | None = None,
    log_every: int | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Train per `config`, writing into `run_dir`; return the last checkpoint's path.

    images            uint8 (N, C, H, W) training images; default: read `config.data`
    device            default: this rank's CUDA device if any, else the CPU
    resume            a checkpoint file or run directory to continue exactly from (a checkpoint
                      behind the run's newest continues only into another, new `run_dir`)
    init              a checkpoint (any kind) whose network and EMA weights a new run starts
                      from, with a fresh optimiser (`ddim.training.warm_start`)
    max_steps         stop at this step in this invocation (the schedule still ends at
                      `training.n_iters`)
    time_budget       seconds of training for the whole run: it stops when they are spent, and
                      `training.lr_decay_fraction` decays the rate over their last share. A
                      resume keeps the recorded budget; one given anew is applied while the rate
                      is flat, and refused once its decay has begun (`ddim.training.resume`)
    amp               bf16 autocast for the network; default on where bf16 is native (CUDA, and
                      CPUs with AVX-512 BF16 or AMX: `ddim.device.native_bf16`); a resume keeps
                      the run's
    compile           torch.compile the network
    channels_last     NHWC weights and batches (faster convolutions on CPUs and GPUs)
    checkpoint_every  steps between checkpoints (default `training.snapshot_freq`)
    keep              checkpoints kept on disk, the highest steps (default 3)
    sample_every      steps between sample grids of the EMA model (default: at checkpoints; 0 off)
    log_every         steps between metric lines and non-finite-loss checks (default 100)
    cache_dir, workers  decoded-dataset cache folder and decode processes
    overwrite         start afresh in a `run_dir` holding another run's checkpoints, deleting
                      them (without it, or `resume` of that run, such a folder is refused)

    The run options (`time_budget`, `amp`, `checkpoint_every` to `log_every`) are recorded in
    `run_dir/run.json`: a resume restores those it is not given, and records those it is given
    anew as changes (`ddim.training.resume.plan_run`, which also refuses what the run cannot
    do). One training at a time writes a run directory (`ddim.training.run_dir.claim_run_dir`).
    """
    if max_steps is not None and max_steps < 1:
        raise DdimError(f"max_steps must be >= 1, got {max_steps}")
    rank, world_size, device = distributed_context(None if device is None else torch.device(device))
    run_dir = Path(run_dir)
    schedule, objective = Schedule.from_config(config), Objective.from_config(config)
    if schedule.batch_size % world_size:
        raise DdimError(f"batch size {schedule.batch_size} is not divisible by {world_size} ranks")
    local_batch = schedule.batch_size // world_size
    given = dict(time_budget=time_budget, amp=amp, checkpoint_every=checkpoint_every, keep=keep,
                 sample_every=sample_every, log_every=log_every)  # fmt: skip

    claim = claim_run_dir(run_dir, resume, overwrite) if rank == 0 else contextlib.nullcontext()
    with claim:
        plan = plan_run(config, run_dir, device=device, resume=resume, init=init, **given)
        options, amp = plan.options, plan.options.amp
        started = start_state(config, device, resume=resume, init=init,
                              channels_last=channels_last)  # fmt: skip
        if rank == 0:
            for note in plan.notes():
                print(note, file=sys.stderr)
            _write_records(run_dir, config, plan, started, resume)
        if images is None:
            images = load_training_images(
                config, cache_dir=cache_dir, workers=workers, progress=progress and rank == 0
            )
        batches = _layout(channels_last, infinite_batches(
            images.to(device), local_batch, seed=config.training.seed,
            random_flip=config.data.random_flip, rank=rank, world_size=world_size,
            start_step=started.state.step,
        ))  # fmt: skip
        end = min(max_steps or config.training.n_iters, config.training.n_iters)
        log = TrainLog(run_dir, schedule.batch_size, rank == 0, progress,
                       start=started.state.step, end=end, cpu=started.cpu_seconds,
                       cpu_hours_before=(started.origin or {}).get("cpu_hours") or 0.0,
                       world_size=world_size, budget=options.time_budget,
                       elapsed=started.elapsed)  # fmt: skip
        loop = _Loop(config, run_dir, started, options, schedule, objective, rank, world_size)
        model = _wrap(started.state.net, device, world_size, compile)
        if compile:
            _check_compiled(loop, model, images, amp)
        return loop.run(model, batches, log, end=end, amp=amp)


class _Loop:
    """The steps of one invocation: train, log, checkpoint and sample until the end, the time
    budget or a signal."""

    def __init__(self, config, run_dir, started: Started, options: RunOptions, schedule: Schedule,
                 objective: Objective, rank: int, world_size: int):  # fmt: skip
        self.config, self.run_dir, self.started, self.options = config, run_dir, started, options
        self.schedule, self.objective = schedule, objective
        self.rank, self.world_size = rank, world_size
        self.state = started.state
        self.alpha_bar = alpha_bars(config.diffusion.betas()).to(_device_of(self.state),
                                                                 torch.float32)
        self.clock = time.perf_counter()
        self.grids = options.sample_every > 0 and rank == 0

    def elapsed(self) -> float:
        """Seconds of training the run has taken, its earlier invocations included."""
        return self.started.elapsed + time.perf_counter() - self.clock

    def progress(self) -> float:
        """How far through the run the next step is: steps over `n_iters`, or time over the
        budget, whichever is further."""
        return run_progress(self.state.step, self.config.training.n_iters, self.elapsed(),
                            self.options.time_budget)  # fmt: skip

    def run(self, model, batches, log: TrainLog, *, end: int, amp: bool) -> Path | None:
        """Train until step `end`, the time budget or SIGTERM/SIGINT; return the last checkpoint.

        One process stops at the step its signal or budget end comes. Under torchrun the ranks
        must stop at one step, so the wish to stop is agreed at the next metrics line or
        checkpoint (`TrainLog.flush` gathers it with the loss): the run stops there if any rank
        wishes to, at most `log_every` steps later, with a checkpoint."""
        state, options, stop, last = self.state, self.options, _StopFlag(), None
        x_T = self._fixed_noise()
        done = state.step >= end or self.progress() >= 1
        with stop.installed():
            while not done:
                progress = self.progress()
                loss = train_step(
                    state, next(batches), self.alpha_bar, objective=self.objective,
                    schedule=self.schedule, progress=progress, model=model, amp=amp,
                    rank=self.rank, world_size=self.world_size,
                )  # fmt: skip
                step = state.step
                log.add(step, loss, self.schedule.learning_rate(step - 1, progress))
                wish = stop.signal is not None or self.progress() >= 1
                done = step >= end or (wish and self.world_size == 1)
                checkpoint = step % options.checkpoint_every == 0
                if step % options.log_every == 0 or checkpoint or done:
                    done = log.flush(step, state.images, stop=wish) or done
                if checkpoint or done:
                    last = self._save(log.run_cpu_seconds())
                if self.grids and step % options.sample_every == 0:
                    self.grids = _sample_grid(self.run_dir, self.config, state.ema, x_T, step,
                                              amp)  # fmt: skip
        log.close()
        last = last or self.started.resumed  # a resumed run whose end had already come
        if stop.signal is not None and self.rank == 0:
            print(f"stopped by signal {stop.signal} at step {state.step}; checkpoint {last}",
                  file=sys.stderr)
        return last

    def _save(self, cpu_seconds: float) -> Path | None:
        """A checkpoint of the run's state (rank 0)."""
        if self.rank != 0:
            return None
        return save_state(self.run_dir, self.config, self.state, cpu_seconds=cpu_seconds,
                          elapsed=self.elapsed(), origin=self.started.origin,
                          keep=self.options.keep)  # fmt: skip

    def _fixed_noise(self) -> torch.Tensor:
        """The run's fixed x_T for its sample grids."""
        c = self.config
        shape = (min(64, c.training.batch_size), c.model.in_channels, *(c.data.image_size,) * 2)
        generator = torch.Generator().manual_seed(c.training.seed + 1)
        return torch.randn(shape, generator=generator).to(_device_of(self.state))


def _device_of(state: TrainState) -> torch.device:
    """The device the run's weights live on."""
    return next(state.net.parameters()).device


def _wrap(net: torch.nn.Module, device: torch.device, world_size: int, compile: bool):
    """The network as the steps call it: its blocks compiled if asked (a twin sharing its
    parameters, `compile_blocks`), DDP-wrapped under torchrun."""
    model = compile_blocks(net) if compile else net
    if world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return model


def _check_compiled(loop: _Loop, model, images: torch.Tensor, amp: bool) -> None:
    """Refuse a compiled network whose gradients are wrong here (`compiled_gradient_errors`)."""
    state = loop.state
    x_0 = to_model_range(images[:2].to(_device_of(state)))
    wrong = compiled_gradient_errors(state, model, x_0, loop.alpha_bar, loop.objective, amp=amp)
    if wrong:
        where = x_0.device.type + (" under bf16 autocast" if amp else "")
        raise DdimError(
            f"torch.compile gives {len(wrong)} of {len(list(state.net.parameters()))} parameters "
            f"a zero gradient where the eager network's is not (e.g. {wrong[0]}) on {where}: "
            "it would train only part of the network; train without compile (or in float32)"
        )


def _write_records(run_dir: Path, config: Config, plan: RunPlan, started: Started,
                   resume) -> None:  # fmt: skip
    """The run directory's config.yml, run.json (options, changes, and the branch's source, when
    a checkpoint of another run directory is continued here) and, for a warm start, init.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yml", dump_config(config))
    write_run_record(run_dir, plan.options, list(plan.history), plan.branched_from)
    if started.origin is not None and resume is None:
        write_init_record(run_dir, started.origin)


def _layout(channels_last: bool, batches):
    """The batches, in NHWC memory layout if `channels_last`."""
    for x in batches:
        yield x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def _sample_grid(run_dir: Path, config: Config, ema, x_T, step: int, amp: bool) -> bool:
    """A grid of DDIM samples of the EMA model from the run's fixed x_T; whether grids can go on
    being written (a grid that cannot be written is a warning: the run goes on without them)."""
    s = config.sampling
    with torch.autocast(x_T.device.type, dtype=torch.bfloat16, enabled=amp):
        x_0 = sample(ema, x_T, config.diffusion.betas(), steps=s.steps, skip=s.skip, eta=s.eta)
    try:
        save_grid(to_uint8(x_0), run_dir / "samples" / f"step-{step:08d}.png")
    except (DdimError, OSError) as error:
        warnings.warn(f"no more sample grids in this run: {error}", stacklevel=2)
        return False
    return True
