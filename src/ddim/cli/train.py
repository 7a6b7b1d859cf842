"""`ddim train`: train a DDPM on a folder, zip or CIFAR-10 batches; one process or `torchrun`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ddim.cli._common import add_overwrite_argument, check_count, data_overrides
from ddim.config import apply_overrides, dump_config, load_config
from ddim.errors import DdimError
from ddim.hub import cache_root

HELP = "Train a DDPM (ε-prediction, the DDPM reference recipe); resumable, torchrun-ready."
EXAMPLE = (
    "ddim train --config cifar10 --data cifar10 --subdir train "
    "--set training.n_iters=800000"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim train`."""
    parser.add_argument("--config", default="cifar10", help="config name or YAML file")
    parser.add_argument("--data", help="dataset: image folder, zip, .npz, cifar-10-batches-py, or "
                        "a name (cifar10: fetched once into the cache, `ddim cache list`)")
    parser.add_argument("--subdir", help="sub-folder of the dataset, e.g. train (cifar10: train "
                        "or test)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. training.lr=1e-4 (repeatable)",
    )
    parser.add_argument("--runs", default="runs", help="folder for new run directories")
    parser.add_argument("--run-dir", help="exact run directory (default: a new numbered one)")
    parser.add_argument("--resume", help="run directory or checkpoint to continue exactly")
    parser.add_argument(
        "--init",
        metavar="CKPT",
        help="start a new run from this checkpoint's weights and EMA (ours, the bundled model "
        "'bundled', an official ckpt.pth, a diffusers folder), with a fresh optimiser",
    )
    parser.add_argument("--batch", type=int, metavar="N",
                        help="global batch size (training.batch_size)")
    parser.add_argument("--max-images", type=int, metavar="N",
                        help="train N images in all: sets training.n_iters to N / batch")
    parser.add_argument("--time-budget", metavar="TIME",
                        help="train for this long in all (e.g. 90s, 6m, 2h; a resume goes on "
                        "until it is spent); training.lr_decay_fraction decays the rate over "
                        "its last share")
    parser.add_argument("--max-steps", type=int,
                        help="stop at this step in this invocation (--resume goes on)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    parser.add_argument("--no-amp", "--fp32", action="store_true",
                        help="train in float32 even where bf16 autocast is the fast path")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network block by block (docs/performance.md)")
    parser.add_argument("--checkpoint-every", type=int,
                        help="steps (default training.snapshot_freq; a resume keeps the run's)")
    parser.add_argument("--keep", type=int,
                        help="checkpoints kept, the highest steps (default 3; a resume keeps "
                        "the run's)")
    parser.add_argument("--sample-every", type=int,
                        help="steps between sample grids (0: off; default: at checkpoints)")
    parser.add_argument("--log-every", type=int, help="steps between metric lines (default 100)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes decoding the images once, before training (default: "
                             "the cores, at most 8; 0: in this process)")
    parser.add_argument("--cache-dir", default=str(cache_root() / "decoded"),
                        help="where the decoded images are kept, as uint8, for the next run on "
                             "the same files (default: decoded/ in the cache, $DDIM_CACHE or "
                             "~/.cache/ddim)")
    parser.add_argument("--dry-run", action="store_true", help="print the config and stop")
    add_overwrite_argument(parser)


# What a resumed run keeps from its checkpoint: the network, the schedule, the image size.
FIXED_ON_RESUME = ("model", "diffusion", "data.image_size", "data.channels")


def resolve_config(args):
    """The config from --config (or the resumed checkpoint), --data/--subdir, --set, --batch and
    --max-images."""
    overrides = [*args.set, *data_overrides(args.data, args.subdir)]
    if args.batch is not None:
        check_count(args.batch, "--batch")
        overrides.append(f"training.batch_size={args.batch}")
    config = _resolve(args, overrides)
    if args.max_images is not None:
        check_count(args.max_images, "--max-images")
        batch = config.training.batch_size
        config = apply_overrides(config, [f"training.n_iters={-(-args.max_images // batch)}"])
    return config


def _resolve(args, overrides):
    """The config from --config, or from the resumed checkpoint, with `overrides` applied."""
    if not args.resume:
        return apply_overrides(load_config(args.config), overrides)
    from ddim.checkpoint import load_checkpoint
    from ddim.training import latest_checkpoint

    saved = load_checkpoint(latest_checkpoint(args.resume)).config
    config = apply_overrides(saved, overrides)
    old, new = saved.to_dict(), config.to_dict()
    for section, values in new.items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if value != old[section][key] and name.startswith(FIXED_ON_RESUME):
                raise DdimError(
                    f"--set {name}={value} would change the resumed run's {name} "
                    f"({old[section][key]}): its weights and schedule are fixed by its "
                    "checkpoint; start a new run to change it"
                )
    return config



def run(args) -> int:
    """Resolve the config, print it, and train (unless --dry-run)."""
    config = resolve_config(args)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(dump_config(config), end="")
    if args.dry_run:
        return 0
    from ddim.device import parse_device
    from ddim.training import load_training_images, train
    from ddim.training.warm_start import load_init_checkpoint

    check_count(args.workers, "--workers", least=0)
    for flag, value, least in (("--keep", args.keep, 1), ("--log-every", args.log_every, 1),
                               ("--checkpoint-every", args.checkpoint_every, 1),
                               ("--sample-every", args.sample_every, 0),
                               ("--max-steps", args.max_steps, 1)):  # fmt: skip
        if value is not None:
            check_count(value, flag, least=least)
    device = parse_device(args.device)
    init = _init_path(args.init)
    if init is not None:
        load_init_checkpoint(init, config)  # refused here, before a run directory is made
    # and the data is read before the run directory too: a bad path makes none
    images = load_training_images(config, cache_dir=args.cache_dir, workers=args.workers,
                                  progress=rank == 0)  # fmt: skip
    run_dir = _run_dir(args, config, rank)
    if rank == 0:
        print(f"run directory: {run_dir}", file=sys.stderr)
    last = train(
        config,
        run_dir,
        device=device,
        resume=args.resume,
        init=init,
        max_steps=args.max_steps,
        time_budget=None if args.time_budget is None else parse_duration(args.time_budget),
        amp=False if args.no_amp else None,
        compile=args.compile,
        checkpoint_every=args.checkpoint_every,
        keep=args.keep,
        sample_every=args.sample_every,
        log_every=args.log_every,
        images=images,
        overwrite=args.overwrite,
    )
    if rank == 0:
        print(f"last checkpoint: {last}")
    return 0


def parse_duration(text: str) -> float:
    """Seconds in a duration such as 90, 90s, 6m, 1.5h (--time-budget)."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise DdimError(f"--time-budget {text!r}: give a positive duration such as 90s, 6m, 2h")
    return seconds


def _init_path(init: str | None) -> Path | None:
    """--init's checkpoint; the word `bundled` names the model that ships with the package."""
    if init is None:
        return None
    if init == "bundled":
        from ddim.checkpoint import bundled_checkpoint

        return bundled_checkpoint()
    return Path(init)


def _run_dir(args, config, rank: int) -> Path:
    """--run-dir, the resumed run's folder, or a new numbered folder (shared by all ranks)."""
    from ddim.training import new_run_dir

    if args.run_dir:
        return Path(args.run_dir)
    if args.resume:
        path = Path(args.resume)
        return path.parent.parent if path.is_file() else path
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DdimError("under torchrun, pass --run-dir so that every rank writes to one folder")
    name = Path(config.data.path or "data").stem.replace("_", "-")
    return new_run_dir(args.runs, f"{name}-{config.data.image_size}px")
