"""`ddim demo`: train a tiny model on procedural shapes on the CPU, sample it, write a report."""

from __future__ import annotations

import argparse
import shlex

from ddim.cli._common import add_overwrite_argument, check_count, check_seeds

# What `ddim demo` owns in its folder (the rest of its files have fixed names it rewrites).
OWNED = ("run", "report.html", "report.md", "results.json")

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
    add_overwrite_argument(parser)


def run(args) -> int:
    """Run the demo and print where the report is."""
    from ddim.device import parse_device
    from ddim.experiments.demo import run_demo
    from ddim.files import claim_output, folder_output

    check_count(args.steps, "--steps")
    check_seeds(args.seed, 10**7)  # the demo draws seeds up to seed + a few million
    device = parse_device(args.device)
    if args.threads is not None:
        import torch

        torch.set_num_threads(check_count(args.threads, "--threads"))
    command = (
        f"ddim demo -o {shlex.quote(str(args.out))} --steps {args.steps} --seed {args.seed} "
        f"--device {shlex.quote(args.device)}"
    ) + (f" --threads {args.threads}" if args.threads is not None else "")
    settings = {"steps": args.steps, "seed": args.seed, "device": device.type}
    output = folder_output(args.out, OWNED, command="demo", reused=("run",))  # a resumable run
    with claim_output(output, settings, overwrite=args.overwrite):
        report = run_demo(
            args.out,
            steps=args.steps,
            seed=args.seed,
            device=device,
            progress=not args.no_progress,
            command=command,
        )
    print(f"report: {report}")
    return 0
