"""`ddim train`: train a DDPM on a folder, zip or CIFAR-10 batches; one process or `torchrun`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ddim.cli._common import add_overwrite_argument, check_count, data_overrides
from ddim.config import apply_overrides, dump_config, load_config
from ddim.errors import DdimError

HELP = "Train a DDPM (ε-prediction, the DDPM reference recipe); resumable, torchrun-ready."
EXAMPLE = (
    "ddim train --config cifar10 --data ../shared/data/cifar10-jpeg.zip --subdir train "
    "--set training.n_iters=800000"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim train`."""
    parser.add_argument("--config", default="cifar10", help="config name or YAML file")
    parser.add_argument("--data", help="dataset: image folder, zip, .npz or cifar-10-batches-py")
    parser.add_argument("--subdir", help="sub-folder of the dataset, e.g. train")
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
    parser.add_argument("--max-steps", type=int,
                        help="stop at this step in this invocation (--resume goes on)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    parser.add_argument("--no-amp", "--fp32", action="store_true",
                        help="train in float32 even where bf16 autocast is the fast path")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--checkpoint-every", type=int, help="steps (default snapshot_freq)")
    parser.add_argument("--keep", type=int, default=3, help="checkpoints kept (default 3)")
    parser.add_argument("--sample-every", type=int, help="steps between sample grids (0: off)")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "ddim"))
    parser.add_argument("--dry-run", action="store_true", help="print the config and stop")
    add_overwrite_argument(parser)


# What a resumed run keeps from its checkpoint: the network, the schedule, the image size.
FIXED_ON_RESUME = ("model", "diffusion", "data.image_size", "data.channels")


def resolve_config(args):
    """The config from --config (or the resumed checkpoint), --data/--subdir and --set."""
    overrides = [*args.set, *data_overrides(args.data, args.subdir)]
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
    from ddim.training import train

    check_count(args.workers, "--workers", least=0)
    device = parse_device(args.device)
    run_dir = _run_dir(args, config, rank)
    if rank == 0:
        print(f"run directory: {run_dir}", file=sys.stderr)
    last = train(
        config,
        run_dir,
        device=device,
        resume=args.resume,
        init=_init_path(args.init),
        max_steps=args.max_steps,
        amp=False if args.no_amp else None,
        compile=args.compile,
        checkpoint_every=args.checkpoint_every,
        keep=args.keep,
        sample_every=args.sample_every,
        log_every=args.log_every,
        cache_dir=args.cache_dir,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    if rank == 0:
        print(f"last checkpoint: {last}")
    return 0


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
