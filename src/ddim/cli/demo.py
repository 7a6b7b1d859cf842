"""`ddim demo`: train a tiny model on procedural shapes on the CPU, sample it, write a report."""

from __future__ import annotations

import argparse
import shlex

HELP = "Train a tiny DDPM on built-in shapes, sample with DDIM and DDPM, write an HTML report."
EXAMPLE = "ddim demo -o demo --steps 1200 --seed 0 --device cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim demo`."""
    from ddim.experiments.demo import DemoSettings

    default_steps = DemoSettings().steps
    parser.add_argument("-o", "--out", default="demo", help="output folder (default demo)")
    parser.add_argument(
        "--steps", type=int, default=default_steps, help=f"training steps (default {default_steps})"
    )
    parser.add_argument("--seed", type=int, default=0, help="data, weights and noise seed")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 …")
    parser.add_argument(
        "--threads", type=int, help="CPU threads for torch (default: torch's; 1 on a busy machine)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    """Run the demo and print where the report is."""
    from ddim.errors import DdimError
    from ddim.experiments.demo import run_demo

    if args.steps < 1:
        raise DdimError(f"--steps must be >= 1, got {args.steps}")
    if args.threads is not None:
        if args.threads < 1:
            raise DdimError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    command = (
        f"ddim demo -o {shlex.quote(str(args.out))} --steps {args.steps} --seed {args.seed} "
        f"--device {shlex.quote(args.device)}"
    ) + (f" --threads {args.threads}" if args.threads is not None else "")
    report = run_demo(
        args.out,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        command=command,
    )
    print(f"report: {report}")
    return 0
