"""The order of DDIM (η = 0) and DPM-Solver++(2M) measured on the exact probability-flow ODE.

Gaussian data (`toy_data`: 16 dimensions, standard deviations 0.01 to 0.5), the exact ε-predictor,
and the ODE's closed-form solution (`GaussianOracle.ode_solution`): each cell is the RMS distance
at t = 0 between a solver's path and the exact one, from the same x_T (64 draws) at t = 999, on the
`logsnr` grid of S timesteps. Two schedules: one whose λ falls linearly in t over the linear
schedule's range, where every grid is S distinct timesteps even in λ, and the linear schedule
itself, where integer timesteps cannot follow the grid near t = 0. The slope is the least-squares
fit of log error against log S. Prints Markdown; `--plot` also draws log10 error against S.
Usage:

    python benchmarks/solver_order.py [--plot docs/images/solver-order.png]
"""

import argparse

import numpy as np
import torch

from ddim.diffusion.oracle import GaussianOracle, ode_error, toy_data
from ddim.diffusion.samplers import sample, sample_dpmpp_2m
from ddim.diffusion.schedule import (
    alpha_bars,
    betas_from_alpha_bars,
    lambdas,
    make_betas,
    timesteps,
)
from ddim.experiments.report import Panel, save_plot

STEPS = (10, 20, 40, 80, 160)
SOLVERS = {"DDIM (η = 0)": sample, "DPM-Solver++(2M)": sample_dpmpp_2m}


def schedules() -> dict[str, torch.Tensor]:
    """The two β schedules: λ linear in t over the linear schedule's λ range, and linear β."""
    linear = make_betas("linear", 1000)
    lam = lambdas(alpha_bars(linear))
    even = torch.linspace(float(lam[0]), float(lam[-1]), 1000, dtype=torch.float64)
    return {"λ linear in t": betas_from_alpha_bars(torch.sigmoid(2 * even)), "linear β": linear}


def measure(betas: torch.Tensor, x_T: torch.Tensor, mean, std) -> dict[str, list[float]]:
    """RMS error at t = 0 per solver and S."""
    oracle = GaussianOracle(mean, std, betas)
    seqs = [timesteps(1000, S, "logsnr", betas=betas) for S in STEPS]
    return {name: [ode_error(solver, oracle, betas, x_T, seq) for seq in seqs]
            for name, solver in SOLVERS.items()}


def slope(errors: list[float], first: int = 0) -> float:
    """Least-squares slope of log error against log S, from STEPS[first] on."""
    return float(np.polyfit(np.log(STEPS[first:]), np.log(errors[first:]), 1)[0])


def to_clean_data(betas: torch.Tensor, x_T: torch.Tensor, mean, std) -> dict[str, float]:
    """RMS error of each solver's output at S = 160, last step included, against the exact ODE
    solution at ᾱ = 1: the floor that the fixed-size last step adds."""
    oracle = GaussianOracle(mean, std, betas)
    exact = oracle.ode_solution(x_T, 999, -1)
    seq = timesteps(1000, STEPS[-1], "logsnr", betas=betas)
    return {name: float((solver(oracle, x_T, betas, steps=seq) - exact).square().mean().sqrt())
            for name, solver in SOLVERS.items()}


def table(betas: torch.Tensor, errors: dict[str, list[float]]) -> str:
    """One Markdown table: a row per solver, a column per S, the fitted slope last."""
    calls = [len(timesteps(1000, S, "logsnr", betas=betas)) for S in STEPS]
    head = " | ".join(f"S = {S}" + (f" ({c} calls)" if c != S else "")
                      for S, c in zip(STEPS, calls))
    lines = [f"| solver | {head} | slope | slope from S = 20 |",
             "|" + " --- |" * (len(STEPS) + 3)]
    for name, values in errors.items():
        cells = " | ".join(f"{v:.2e}" for v in values)
        lines.append(f"| {name} | {cells} | {slope(values):.2f} | {slope(values, 1):.2f} |")
    ratio = " | ".join(f"{a / b:.1f}×" for a, b in zip(*errors.values()))
    lines.append(f"| DDIM / 2M | {ratio} | | |")
    return "\n".join(lines)


def panel(errors: dict[str, list[float]], title: str) -> Panel:
    """log10 error against S, with lines of slope −1 and −2 through each solver's S = 40 point
    (ASCII labels: the plot's font has no Greek)."""
    labels = {"DDIM (η = 0)": "DDIM (eta = 0)", "DPM-Solver++(2M)": "DPM-Solver++(2M)"}
    guides, series, mid = {}, {}, STEPS.index(40)
    for order, (name, values) in enumerate(errors.items(), start=1):
        series[labels[name]] = [(S, float(np.log10(e))) for S, e in zip(STEPS, values)]
        guides[f"slope -{order}"] = [(S, float(np.log10(values[mid] * (40 / S) ** order)))
                                     for S in STEPS]
    series = {**guides, **series}  # the solvers drawn over the guides
    grey = {"slope -1": (170, 170, 170), "slope -2": (110, 110, 110)}
    ascii_title = title.replace("λ", "lambda").replace("β", "beta")
    return Panel(series, title=f"log10 RMS error at t = 0, {ascii_title}", y_from_zero=False,
                 colors=grey)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", help="write the plot to this PNG")
    args = parser.parse_args()
    mean, std = toy_data(16)
    x_T = torch.randn(64, 16, generator=torch.Generator().manual_seed(30), dtype=torch.float64)
    panels = []
    for title, betas in schedules().items():
        errors = measure(betas, x_T, mean, std)
        print(f"\n{title}:\n\n{table(betas, errors)}")
        floor = to_clean_data(betas, x_T, mean, std)
        print("\nat S = 160 with the last step, against x_0 at ᾱ = 1: " + ", ".join(
            f"{name} {value:.2e}" for name, value in floor.items()))
        panels.append(panel(errors, title))
    if args.plot:
        save_plot(panels, args.plot)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
