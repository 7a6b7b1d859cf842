"""The training loop: DDPM's recipe (Ho et al. 2020, the reference trainer behind FID 3.17).

One step: draw a global batch x_0 (uint8 data held on the device, flipped at random), t uniform on
[0, T) and ε ~ N(0, I) from the run's own generator; take the ε-prediction loss (DDPM eq. 14);
clip the gradient's global norm; Adam with linear learning-rate warm-up; EMA of the weights.

Everything that decides the weights is in the `Config` (saved in every checkpoint); the keyword
arguments of `train` decide only how the run is carried out. Runs resume exactly: the checkpoint's
training state holds the optimiser, the noise generator, the global RNG (dropout), and the step,
from which the data order follows (`ddim.data.infinite_batches`).

Under `torchrun` every rank draws the same global batch of t and ε and takes its own slice, so N
processes with a global batch G compute the same update as one process with batch G (dropout
aside, which uses each rank's own RNG).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from ddim.checkpoint import keep_last, load_checkpoint, save_checkpoint
from ddim.config import Config, dump_config
from ddim.data import infinite_batches, load_all, open_dataset, to_uint8
from ddim.device import distributed_context, native_bf16
from ddim.errors import DdimError
from ddim.generate import betas_of
from ddim.images import save_grid
from ddim.loss import simple_loss, training_timesteps
from ddim.samplers import sample
from ddim.schedule import alpha_bars
from ddim.unet import UNet, reference_init_

CHECKPOINT_GLOB = "ckpt-*.safetensors"


# --- run directories and resume ----------------------------------------------------------------


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
            print(f"skipping unreadable checkpoint {candidate}: {error}")
    raise DdimError(f"no complete checkpoint to resume from in {path / 'checkpoints'}")


# --- pieces of a step --------------------------------------------------------------------------


def ema_decay(config: Config, step: int = 0) -> float:
    """EMA decay for the update made at `step` (0-based).

    The base half-life is `training.ema_halflife_kimg` thousand images, or the one that
    `model.ema_rate` per step implies. With `training.ema_rampup_ratio` r (EDM, Karras et al.
    2022), the half-life is at most r times the images seen so far, so that early on the EMA
    follows the young network instead of averaging in the initial weights:
    decay = 0.5 ^ (batch / min(half-life, r · images seen)).
    """
    t = config.training
    rate = config.model.ema_rate
    if t.ema_halflife_kimg is None and t.ema_rampup_ratio is None:
        return rate
    if t.ema_halflife_kimg is not None:
        halflife = t.ema_halflife_kimg * 1000
    elif 0 < rate < 1:
        halflife = t.batch_size * math.log(0.5) / math.log(rate)
    else:
        return rate  # 0 copies the network, 1 never moves: no half-life to ramp up
    if t.ema_rampup_ratio is not None:
        halflife = min(halflife, t.ema_rampup_ratio * (step + 1) * t.batch_size)
    return 0.5 ** (t.batch_size / max(halflife, 1e-8))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·net, for all parameters in one fused call."""
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in net.parameters()], 1 - decay)


def learning_rate(config: Config, step: int) -> float:
    """Adam's learning rate for the update made at `step` (0-based): lr · min(step / warmup, 1),
    the DDPM reference trainer's warm-up (its first update has learning rate 0), then flat."""
    warmup = config.training.warmup
    return config.training.lr * (min(1.0, step / warmup) if warmup else 1.0)


def make_optimizer(config: Config, net: torch.nn.Module, device: torch.device):
    """Adam as configured; the fused kernel on CUDA."""
    t = config.training
    return torch.optim.Adam(
        net.parameters(),
        lr=t.lr,
        betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_eps,
        weight_decay=t.weight_decay,
        fused=device.type == "cuda",
    )


def init_training(config: Config, device: torch.device):
    """(network, EMA copy, optimiser, noise generator) at step 0, seeded by `training.seed`."""
    torch.manual_seed(config.training.seed)  # initial weights and dropout follow the seed
    net = UNet.from_config(config.model, config.data.image_size)
    if config.training.init == "reference":
        reference_init_(net)
    net = net.to(device)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = make_optimizer(config, net, device)
    generator = torch.Generator(device=device).manual_seed(config.training.seed)
    return net, ema, optimizer, generator


# --- the loop ----------------------------------------------------------------------------------


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
    max_steps: int | None = None,
    amp: bool | None = None,
    compile: bool = False,
    checkpoint_every: int | None = None,
    keep: int = 3,
    sample_every: int | None = None,
    log_every: int = 100,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Train per `config`, writing into `run_dir`; return the last checkpoint's path.

    images            uint8 (N, C, H, W) training images; default: read `config.data`
    device            default: this rank's CUDA device if any, else the CPU
    resume            a checkpoint file or run directory to continue exactly from
    max_steps         stop at this step in this session (default `training.n_iters`)
    amp               bf16 autocast for the network; default on where bf16 is native (CUDA, and
                      CPUs with AVX-512 BF16 or AMX: `ddim.device.native_bf16`)
    compile           torch.compile the network
    checkpoint_every  steps between checkpoints (default `training.snapshot_freq`)
    keep              checkpoints kept on disk (the newest)
    sample_every      steps between sample grids of the EMA model (default: at checkpoints; 0 off)
    log_every         steps between metric lines (and non-finite-loss checks)
    cache_dir, workers  decoded-dataset cache folder and decode processes
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

    net, ema, optimizer, generator = init_training(config, device)
    step, cpu_seconds = 0, 0.0
    if resume is not None:
        step, cpu_seconds = _restore(latest_checkpoint(resume), net, ema, optimizer, generator)
    model = net
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if compile:
        model = torch.compile(model)

    if images is None:
        images = load_training_images(
            config, cache_dir=cache_dir, workers=workers, progress=progress and rank == 0
        )
    batches = infinite_batches(
        images.to(device),
        t_cfg.batch_size // world_size,
        seed=t_cfg.seed,
        random_flip=config.data.random_flip,
        rank=rank,
        world_size=world_size,
        start_step=step,
    )
    writer = _Writer(run_dir, config, rank == 0, progress, start=step, end=end, cpu=cpu_seconds)
    alpha_bar = alpha_bars(betas_of(config)).to(device, torch.float32)
    x_T = torch.randn(
        (min(64, t_cfg.batch_size), config.model.in_channels, *(config.data.image_size,) * 2),
        generator=torch.Generator().manual_seed(t_cfg.seed + 1),
    ).to(device)

    stop = _StopFlag()
    last = None
    with stop.installed():
        while step < end and stop.signal is None:
            loss = _train_step(
                config,
                model,
                net,
                ema,
                optimizer,
                batches,
                generator,
                alpha_bar,
                step,
                rank,
                world_size,
                amp,
            )
            step += 1
            writer.add(step, loss, learning_rate(config, step - 1))
            if step % log_every == 0 or step == end:
                writer.flush(step)
            if step % checkpoint_every == 0 or step == end or stop.signal is not None:
                writer.flush(step)
                state = (optimizer, generator, writer.cpu_seconds())
                last = _save(run_dir, config, step, net, ema, state, keep, rank)
            if sample_every and step % sample_every == 0 and rank == 0:
                _sample_grid(run_dir, config, ema, x_T, step, amp)
    writer.close()
    if stop.signal is not None and rank == 0:
        print(f"stopped by signal {stop.signal} at step {step}; checkpoint {last}")
    return last


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


def _train_step(
    config,
    model,
    net,
    ema,
    optimizer,
    batches: Iterator[torch.Tensor],
    generator,
    alpha_bar,
    step: int,
    rank: int,
    world_size: int,
    amp: bool,
) -> torch.Tensor:
    """One optimisation step; returns the (device) loss without synchronising."""
    x_0 = next(batches)
    local = x_0.shape[0]
    T = config.diffusion.num_diffusion_timesteps
    # every rank draws the global batch's t and ε and keeps its slice (see the module docstring)
    t = training_timesteps(
        local * world_size,
        T,
        generator=generator,
        device=x_0.device,
        antithetic=config.training.antithetic,
    )[rank * local : (rank + 1) * local]
    noise = torch.randn(
        (local * world_size, *x_0.shape[1:]), generator=generator, device=x_0.device
    )[rank * local : (rank + 1) * local]
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, step)
    with torch.autocast(x_0.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = simple_loss(model, x_0, t, noise, alpha_bar, reduction=config.training.loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.training.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.training.grad_clip, foreach=True)
    optimizer.step()
    ema_update(ema, net, ema_decay(config, step))
    return loss.detach()


def _save(run_dir, config, step, net, ema, state, keep, rank) -> Path | None:
    """Write an atomic checkpoint with the full training state (rank 0), keep the newest `keep`.

    `state` is (optimizer, noise generator, CPU seconds spent on the run so far)."""
    if rank != 0:
        return None
    optimizer, generator, cpu_seconds = state
    if not all(torch.isfinite(p).all() for p in net.parameters()):
        raise DdimError(f"non-finite weights at step {step}; not overwriting earlier checkpoints")
    train_state = {
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "step": step,
        "cpu_seconds": float(cpu_seconds),
    }
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(
        folder / f"ckpt-{step:08d}.safetensors",
        model_state=net.state_dict(),
        ema_state=ema.state_dict(),
        config=config,
        step=step,
        train_state=train_state,
    )
    keep_last(folder, CHECKPOINT_GLOB, keep)
    return path


def _restore(path: Path, net, ema, optimizer, generator) -> tuple[int, float]:
    """Load weights, EMA and training state from `path`; return the step to continue from and
    the CPU seconds spent before it."""
    checkpoint = load_checkpoint(path)
    state = checkpoint.load_train_state()
    if state is None:
        raise DdimError(f"{path} holds no training state to resume from")
    net.load_state_dict(checkpoint.model_state)
    ema.load_state_dict(checkpoint.ema_state or checkpoint.model_state)
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"]), float(state.get("cpu_seconds", 0.0))


@torch.no_grad()
def _sample_grid(run_dir: Path, config: Config, ema, x_T, step: int, amp: bool) -> None:
    """A grid of DDIM samples of the EMA model from the run's fixed x_T."""
    s = config.sampling
    with torch.autocast(x_T.device.type, dtype=torch.bfloat16, enabled=amp):
        x_0 = sample(
            ema, x_T, betas_of(config), steps=s.steps, skip=s.skip, eta=s.eta
        )
    save_grid(to_uint8(x_0), run_dir / "samples" / f"step-{step:08d}.png")


class _Writer:
    """Progress bar, metrics.jsonl and (if installed) TensorBoard, on rank 0 only."""

    def __init__(
        self, run_dir: Path, config: Config, active: bool, progress: bool, start, end, cpu=0.0
    ):
        self.active = active
        self.batch = config.training.batch_size
        self.sum, self.count, self.lr = None, 0, 0.0
        self.time, self.mark = time.perf_counter(), start
        self.cpu_start, self.cpu_before = time.process_time(), cpu
        if not active:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yml").write_text(dump_config(config), encoding="utf-8")
        self.metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.bar = tqdm(total=end, initial=start, unit="step", disable=not progress, smoothing=0.1)
        self.tensorboard = _tensorboard(run_dir)

    def add(self, step: int, loss: torch.Tensor, lr: float) -> None:
        """Accumulate a step's loss on the device (no synchronisation)."""
        self.sum = loss if self.sum is None else self.sum + loss
        self.count += 1
        self.lr = lr
        if self.active:
            self.bar.update(1)

    def cpu_seconds(self) -> float:
        """CPU time of this process (all its threads) spent on the run, earlier runs included."""
        return self.cpu_before + time.process_time() - self.cpu_start

    def flush(self, step: int) -> None:
        """Write the mean loss since the last flush; stop the run if it is not finite."""
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
            "images_seen": step * self.batch,
            "cpu_hours": self.cpu_seconds() / 3600,
        }
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
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


def _tensorboard(run_dir: Path):
    """A TensorBoard writer if the package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
