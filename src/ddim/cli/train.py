"""`ddim train`: train a DDPM on a folder, zip or CIFAR-10 batches; one process or `torchrun`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ddim.cli._common import data_overrides
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
    parser.add_argument("--max-steps", type=int, help="stop at this step in this session")
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


def resolve_config(args):
    """The config from --config (or the resumed checkpoint), --data/--subdir and --set."""
    if args.resume:
        from ddim.checkpoint import load_checkpoint
        from ddim.training import latest_checkpoint

        config = load_checkpoint(latest_checkpoint(args.resume)).config
    else:
        config = load_config(args.config)
    return apply_overrides(config, [*args.set, *data_overrides(args.data, args.subdir)])



def run(args) -> int:
    """Resolve the config, print it, and train (unless --dry-run)."""
    config = resolve_config(args)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(dump_config(config), end="")
    if args.dry_run:
        return 0
    from ddim.training import train

    run_dir = _run_dir(args, config, rank)
    if rank == 0:
        print(f"run directory: {run_dir}", file=sys.stderr)
    last = train(
        config,
        run_dir,
        device=args.device,
        resume=args.resume,
        max_steps=args.max_steps,
        amp=False if args.no_amp else None,
        compile=args.compile,
        checkpoint_every=args.checkpoint_every,
        keep=args.keep,
        sample_every=args.sample_every,
        log_every=args.log_every,
        cache_dir=args.cache_dir,
        workers=args.workers,
    )
    if rank == 0:
        print(f"last checkpoint: {last}")
    return 0


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
