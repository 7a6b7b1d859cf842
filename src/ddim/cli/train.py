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
                        help="train in float32 even where bf16 autocast is the fast path (a "
                        "resume keeps the run's arithmetic)")
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
    parser.add_argument("--dry-run", action="store_true",
                        help="print the config, make every check the run makes before its work "
                        "(data, --init, run directory, what a resume may change), and stop")
    add_overwrite_argument(parser)


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
    """The config from --config, or from the resumed checkpoint, with `overrides` applied (what
    a resume may not change is refused by `ddim.training.resume.plan_run`)."""
    if not args.resume:
        return apply_overrides(load_config(args.config), overrides)
    from ddim.checkpoint import load_checkpoint
    from ddim.training import latest_checkpoint

    saved = load_checkpoint(latest_checkpoint(args.resume)).config
    return apply_overrides(saved, overrides)


def run(args) -> int:
    """Resolve the config, print it, make the run's checks, and train (unless --dry-run)."""
    config = resolve_config(args)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(dump_config(config), end="")
    settings = _run_settings(args)
    dataset = _check(args, config, settings, rank)
    if args.dry_run:
        return 0
    from ddim.data import load_all
    from ddim.device import parse_device
    from ddim.training import train

    # the data is read before the run directory is made: a bad path makes none
    images = load_all(dataset, workers=args.workers, progress=rank == 0,
                      cache_dir=args.cache_dir)  # fmt: skip
    run_dir = _run_dir(args, config, rank)
    if rank == 0:
        print(f"run directory: {run_dir}", file=sys.stderr)
    last = train(
        config,
        run_dir,
        device=parse_device(args.device),
        resume=args.resume,
        init=_init_path(args.init),
        max_steps=args.max_steps,
        compile=args.compile,
        images=images,
        overwrite=args.overwrite,
        **settings,
    )
    if rank == 0:
        print(f"last checkpoint: {last}")
    return 0


def _run_settings(args) -> dict:
    """The run options the flags give (`ddim.training.run_dir.RunOptions`; None: not given, so a
    resume keeps the run's)."""
    for flag, value, least in (("--keep", args.keep, 1), ("--log-every", args.log_every, 1),
                               ("--checkpoint-every", args.checkpoint_every, 1),
                               ("--sample-every", args.sample_every, 0),
                               ("--max-steps", args.max_steps, 1)):  # fmt: skip
        if value is not None:
            check_count(value, flag, least=least)
    return dict(
        time_budget=None if args.time_budget is None else parse_duration(args.time_budget),
        amp=False if args.no_amp else None,
        checkpoint_every=args.checkpoint_every,
        keep=args.keep,
        sample_every=args.sample_every,
        log_every=args.log_every,
    )


def _check(args, config, settings: dict, rank: int):
    """Every check the run makes before its work, for the run and --dry-run alike: the device,
    --workers, the run directory, --init against the config and what a --resume may change
    (`ddim.training.resume.plan_run`), and the data (opened, not decoded; a dataset name is
    fetched by the run, not by --dry-run). Returns the opened dataset."""
    import torch

    from ddim.device import parse_device, resolve_device
    from ddim.training.loop import open_training_data
    from ddim.training.resume import plan_run
    from ddim.training.run_dir import check_run_dir

    check_count(args.workers, "--workers", least=0)
    device = resolve_device(parse_device(args.device), int(os.environ.get("LOCAL_RANK", "0")),
                            torch.cuda.is_available())  # fmt: skip
    run_dir = _known_run_dir(args)
    if run_dir is not None:
        check_run_dir(run_dir, args.resume, args.overwrite)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DdimError("under torchrun, pass --run-dir so that every rank writes to one folder")
    plan = plan_run(config, run_dir, device=device, resume=args.resume,
                    init=_init_path(args.init), **settings)  # fmt: skip
    if args.dry_run and rank == 0:
        for note in plan.notes():
            print(note, file=sys.stderr)
    return open_training_data(config, fetch=not args.dry_run)


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


def _known_run_dir(args) -> Path | None:
    """--run-dir, or the resumed run's folder; None for a new numbered folder."""
    if args.run_dir:
        return Path(args.run_dir)
    if args.resume:
        path = Path(args.resume)
        return path.parent.parent if path.is_file() else path
    return None


def _run_dir(args, config, rank: int) -> Path:
    """--run-dir, the resumed run's folder, or a new numbered folder (one process only: under
    torchrun `_check` asks for --run-dir)."""
    from ddim.training import new_run_dir

    known = _known_run_dir(args)
    if known is not None:
        return known
    name = Path(config.data.path or "data").stem.replace("_", "-")
    return new_run_dir(args.runs, f"{name}-{config.data.image_size}px")
