"""`ddim oracle`: the paper's Table 1 grid on Gaussian data with the exact ε-predictor, no training.

Each cell is the Fréchet distance between the sampler's output distribution and the data
distribution: exact (from the closed-form moments) and measured (from the real samplers run on
`--n` draws of x_T). It shows what the samplers do, free of any network's error.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ddim.cli._common import (
    add_count_argument,
    add_overwrite_argument,
    add_skip_argument,
    check_count,
    check_seeds,
)
from ddim.diffusion.oracle import (
    GaussianMoments,
    GaussianOracle,
    exact_output_moments,
    frechet_distance_diagonal,
    toy_data,
)
from ddim.diffusion.samplers import check_eta, ddim_plan, ddpm_plan, walk
from ddim.diffusion.schedule import make_betas, timesteps
from ddim.progress import progress_bar

HELP = "Table 1 on Gaussian data with the exact ε-predictor: sampler error against S and η."
EXAMPLE = "ddim oracle --skip quad --steps 10 20 50 100 1000 --n 10000 -o oracle.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim oracle`."""
    add_skip_argument(parser, default="quad", help="timestep sub-sequence (default quad)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 1000])
    parser.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.2, 0.5, 1.0])
    parser.add_argument("--dim", type=int, default=64, help="data dimensions (default 64)")
    add_count_argument(parser, 10000, "samples per cell (0: exact only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", help="also write the markdown table to this file")
    add_overwrite_argument(parser)


def measured(plan, oracle, n, dim, seed):
    """Fréchet distance of `n` real samples of the walk, against the data, from sample moments."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    for step in walk(oracle, x, plan, generator=g):
        x = step.x
    sample = GaussianMoments(x.mean(0), x.var(0))
    return frechet_distance_diagonal(sample, GaussianMoments(oracle.mean, oracle.variance))


def table(args) -> str:
    """The markdown table: one row per η (and σ̂), one column per S."""
    betas = make_betas("linear", 1000)
    mean, std = toy_data(args.dim, args.seed)
    oracle = GaussianOracle(mean, std, betas)
    data = GaussianMoments(mean, std**2)
    start = GaussianMoments(torch.zeros(args.dim, dtype=torch.float64), torch.ones(args.dim))
    seqs = {S: timesteps(1000, S, args.skip, betas=betas) for S in args.steps}
    rows = [(f"η = {eta:g}", lambda seq, eta=eta: ddim_plan(betas, seq, eta)) for eta in args.etas]
    rows.append(("σ̂ (DDPM, large variance)", lambda seq: ddpm_plan(betas, seq, "large")))
    header = "| sampler | " + " | ".join(f"S = {S}" for S in args.steps) + " |"
    lines = [header, "|" + " --- |" * (len(args.steps) + 1)]
    with progress_bar(total=len(rows) * len(args.steps), unit="cell", desc="oracle table") as bar:
        for name, make_plan in rows:
            cells = []
            for S in args.steps:
                bar.update(1)
                plan = make_plan(seqs[S])
                moments = exact_output_moments(plan, mean, std, start)
                exact = frechet_distance_diagonal(moments, data)
                cell = f"{exact:.4f}"
                if args.n:
                    cell += f" ({measured(plan, oracle, args.n, args.dim, args.seed + 1):.4f})"
                cells.append(cell)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check(args) -> None:
    """Reject bad numbers before any work: counts, seeds, η, and sizes that cannot fit."""
    from ddim.files import check_fits_in_memory

    check_count(args.dim, "--dim")
    check_count(args.n, "--n", least=0)
    check_seeds(args.seed, 2)  # the data use seed, the sampler's draws seed + 1
    check_fits_in_memory(4 * 8 * args.n * args.dim, f"--n {args.n} samples of --dim {args.dim}")
    check_fits_in_memory(8 * args.dim, f"--dim {args.dim}")
    for eta in args.etas:
        check_eta(eta, "--etas")
    for S in args.steps:
        timesteps(1000, S, args.skip, betas=make_betas("linear", 1000))


def run(args) -> int:
    """Print (and optionally write) the table."""
    from ddim.files import claim_output, file_output, write_text

    check(args)
    if not args.output:
        sys.stdout.write(table(args))
        return 0
    settings = {key: getattr(args, key) for key in ("skip", "steps", "etas", "dim", "n", "seed")}
    with claim_output(file_output(args.output, command="oracle"), settings,
                      overwrite=args.overwrite):
        text = table(args)
        sys.stdout.write(text)
        write_text(args.output, text)
    return 0
