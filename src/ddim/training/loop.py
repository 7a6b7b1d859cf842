"""The training loop: DDPM's recipe (Ho et al. 2020, the reference trainer behind FID 3.17), run
step by step (`ddim.training.recipe.train_step`) with checkpoints, logs and exact resume.

Everything that decides the weights is in the `Config` (saved in every checkpoint); the keyword
arguments of `train` decide only how the run is carried out. Runs resume exactly: the checkpoint's
training state holds the optimiser, the noise generator, the global RNG (dropout), and the step,
from which the data order follows (`ddim.data.infinite_batches`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from pathlib import Path

import torch

from ddim.checkpoint import keep_last, load_checkpoint, save_checkpoint
from ddim.config import Config
from ddim.data import infinite_batches, load_all, open_dataset, to_uint8
from ddim.device import distributed_context, native_bf16
from ddim.diffusion.samplers import sample
from ddim.diffusion.schedule import alpha_bars
from ddim.errors import DdimError
from ddim.files import write_text
from ddim.images import save_grid
from ddim.training.log import TrainLog
from ddim.training.recipe import TrainState, init_training, learning_rate, train_step
from ddim.training.run_dir import CHECKPOINT_GLOB, claim_run_dir, latest_checkpoint
from ddim.training.warm_start import INIT_RECORD, load_init_checkpoint, warm_start


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


def load_training_images(
    config: Config, *, cache_dir=None, workers: int = 0, progress: bool = True
) -> torch.Tensor:
    """The configured dataset as one uint8 tensor (N, C, H, W) on the CPU."""
    if config.data.path is None:
        raise DdimError("data.path is not set: pass --data PATH (a folder, zip or cifar-10 folder)")
    dataset = open_dataset(
        config.data.path, subdir=config.data.subdir, resolution=config.data.image_size
    )
    return load_all(dataset, workers=workers, progress=progress, cache_dir=cache_dir)


def train(
    config: Config,
    run_dir: str | Path,
    *,
    images: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    resume: str | Path | None = None,
    init: str | Path | None = None,
    max_steps: int | None = None,
    amp: bool | None = None,
    compile: bool = False,
    channels_last: bool = True,
    checkpoint_every: int | None = None,
    keep: int = 3,
    sample_every: int | None = None,
    log_every: int = 100,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Train per `config`, writing into `run_dir`; return the last checkpoint's path.

    images            uint8 (N, C, H, W) training images; default: read `config.data`
    device            default: this rank's CUDA device if any, else the CPU
    resume            a checkpoint file or run directory to continue exactly from
    init              a checkpoint (any kind) whose network and EMA weights a new run starts
                      from, with a fresh optimiser (`ddim.training.warm_start`)
    max_steps         stop at this step in this invocation (default `training.n_iters`)
    amp               bf16 autocast for the network; default on where bf16 is native (CUDA, and
                      CPUs with AVX-512 BF16 or AMX: `ddim.device.native_bf16`)
    compile           torch.compile the network
    channels_last     NHWC weights and batches (faster convolutions on CPUs and GPUs)
    checkpoint_every  steps between checkpoints (default `training.snapshot_freq`)
    keep              checkpoints kept on disk (the newest)
    sample_every      steps between sample grids of the EMA model (default: at checkpoints; 0 off)
    log_every         steps between metric lines (and non-finite-loss checks)
    cache_dir, workers  decoded-dataset cache folder and decode processes
    overwrite         start afresh in a `run_dir` holding another run's checkpoints, deleting
                      them (without it, or `resume` of that run, such a folder is refused)

    One training at a time writes a run directory (`ddim.training.run_dir.claim_run_dir`).
    """
    _check_run_options(max_steps, checkpoint_every, keep, sample_every, log_every)
    rank, world_size, device = distributed_context(None if device is None else torch.device(device))
    run_dir = Path(run_dir)
    t_cfg = config.training
    if t_cfg.batch_size % world_size:
        raise DdimError(
            f"training.batch_size={t_cfg.batch_size} is not divisible by {world_size} ranks"
        )
    amp = native_bf16(device) if amp is None else amp
    checkpoint_every = checkpoint_every or t_cfg.snapshot_freq
    sample_every = checkpoint_every if sample_every is None else sample_every
    end = min(max_steps or t_cfg.n_iters, t_cfg.n_iters)

    claim = claim_run_dir(run_dir, resume, overwrite) if rank == 0 else contextlib.nullcontext()
    with claim:
        state, cpu_seconds, origin = start_state(
            config, device, resume=resume, init=init, channels_last=channels_last
        )
        if origin is not None and resume is None and rank == 0:
            write_text(run_dir / INIT_RECORD, json.dumps(origin, indent=2) + "\n")
        step = state.step
        model = state.net
        if world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                state.net, device_ids=[device.index] if device.type == "cuda" else None
            )
        if compile:
            model = torch.compile(model)

        if images is None:
            images = load_training_images(
                config, cache_dir=cache_dir, workers=workers, progress=progress and rank == 0
            )
        batches = _layout(channels_last, infinite_batches(
            images.to(device),
            t_cfg.batch_size // world_size,
            seed=t_cfg.seed,
            random_flip=config.data.random_flip,
            rank=rank,
            world_size=world_size,
            start_step=step,
        ))
        log = TrainLog(run_dir, config, rank == 0, progress, start=step, end=end, cpu=cpu_seconds)
        alpha_bar = alpha_bars(config.diffusion.betas()).to(device, torch.float32)
        x_T = torch.randn(
            (min(64, t_cfg.batch_size), config.model.in_channels, *(config.data.image_size,) * 2),
            generator=torch.Generator().manual_seed(t_cfg.seed + 1),
        ).to(device)

        stop = _StopFlag()
        last = None
        with stop.installed():
            while state.step < end and stop.signal is None:
                loss = train_step(
                    config, state, next(batches), alpha_bar, model=model, amp=amp, rank=rank,
                    world_size=world_size,
                )
                step = state.step
                log.add(step, loss, learning_rate(config, step - 1))
                if step % log_every == 0 or step == end:
                    log.flush(step, state.images)
                if step % checkpoint_every == 0 or step == end or stop.signal is not None:
                    log.flush(step, state.images)
                    last = _save(run_dir, config, state, log.cpu_seconds(), keep, rank, origin)
                if sample_every and step % sample_every == 0 and rank == 0:
                    _sample_grid(run_dir, config, state.ema, x_T, step, amp)
        log.close()
        if stop.signal is not None and rank == 0:
            print(f"stopped by signal {stop.signal} at step {step}; checkpoint {last}",
                  file=sys.stderr)
        return last


def start_state(
    config: Config,
    device: torch.device,
    *,
    resume: str | Path | None = None,
    init: str | Path | None = None,
    channels_last: bool = False,
) -> tuple[TrainState, float, dict | None]:
    """The state a run starts from: fresh (step 0), resumed exactly from a checkpoint or run
    directory, or warm-started from another checkpoint's weights (`init`); with the CPU seconds
    already spent and the warm start the weights came from (None if none)."""
    if resume is not None and init is not None:
        raise DdimError("resume and init exclude each other: a resumed run has its own weights")
    state = init_training(config, device, channels_last=channels_last)
    if resume is not None:
        cpu_seconds, origin = _restore(latest_checkpoint(resume), state, config)
        return state, cpu_seconds, origin
    if init is not None:
        return state, 0.0, warm_start(state, load_init_checkpoint(init, config))
    return state, 0.0, None


def _check_run_options(max_steps, checkpoint_every, keep, sample_every, log_every) -> None:
    """Reject option values that would train nothing, divide by zero or delete every checkpoint."""
    for name, value, least in (
        ("max_steps", max_steps, 1),
        ("checkpoint_every", checkpoint_every, 1),
        ("keep", keep, 1),
        ("sample_every", sample_every, 0),
        ("log_every", log_every, 1),
    ):
        if value is not None and value < least:
            flag = "--" + name.replace("_", "-")
            raise DdimError(f"{name} ({flag}) must be >= {least}, got {value}")


def _layout(channels_last: bool, batches):
    """The batches, in NHWC memory layout if `channels_last`."""
    for x in batches:
        yield x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _save(
    run_dir: Path,
    config: Config,
    state: TrainState,
    cpu_seconds: float,
    keep: int,
    rank: int,
    origin: dict | None,
) -> Path | None:
    """Write an atomic checkpoint with the full training state (rank 0), keep the newest `keep`;
    its metadata records the images seen and the warm start the run came from (`origin`)."""
    if rank != 0:
        return None
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
    keep_last(folder, CHECKPOINT_GLOB, keep)
    return path


def _lineage(state: TrainState, cpu_seconds: float, origin: dict | None) -> dict:
    """What a checkpoint says of its weights' history: images seen, CPU hours (the warm start's
    included where it recorded them), and the warm start itself."""
    before = (origin or {}).get("cpu_hours") or 0.0
    return {
        "images_seen": state.images,
        "cpu_hours": before + cpu_seconds / 3600,
        "init": origin,
    }


def _restore(path: Path, state: TrainState, config: Config) -> tuple[float, dict | None]:
    """Load weights, EMA and training state from `path` into `state`; return the CPU seconds
    the run had spent before it and the warm start it came from (or None)."""
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
    state.images = int(saved.get("images", state.step * config.training.batch_size))
    return float(saved.get("cpu_seconds", 0.0)), saved.get("origin")


@torch.no_grad()
def _sample_grid(run_dir: Path, config: Config, ema, x_T, step: int, amp: bool) -> None:
    """A grid of DDIM samples of the EMA model from the run's fixed x_T."""
    s = config.sampling
    with torch.autocast(x_T.device.type, dtype=torch.bfloat16, enabled=amp):
        x_0 = sample(ema, x_T, config.diffusion.betas(), steps=s.steps, skip=s.skip, eta=s.eta)
    save_grid(to_uint8(x_0), run_dir / "samples" / f"step-{step:08d}.png")
