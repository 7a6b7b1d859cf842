"""`ddim trajectory`: the same x_T sampled with different S (the paper's Figs. 4/5 consistency)."""

from __future__ import annotations

import argparse
import json
import sys

from ddim.cli._common import (
    add_model_arguments,
    add_ode_arguments,
    add_overwrite_argument,
    check_seeds,
    load_ode_run,
    model_record,
    model_settings,
    picture_output,
)
from ddim.progress import progress_bar

HELP = "Figs. 4/5: one x_T decoded with several S; rows show predicted x0 along each DDIM walk."
EXAMPLE = (
    "ddim trajectory --ckpt ckpt.safetensors --seed 0 --steps 10 20 50 100 --show 8 -o traj.png"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim trajectory`."""
    add_model_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="x_T as `ddim sample` draws it (0)")
    add_ode_arguments(parser, steps_nargs="+")
    parser.add_argument("--show", type=int, default=8,
                        help="predicted x0 shown per row, at evenly spaced steps (8)")
    parser.add_argument("-o", "--out", default="trajectory.png",
                        help="PNG: one row per S, x0 predictions then the final image; + .json")
    add_overwrite_argument(parser)


def run(args) -> int:
    """Decode the seed's x_T at each S and write the grid and a JSON record."""
    from ddim.experiments.paper import pad_rows, seed_latents, shown_steps, trajectory_row
    from ddim.files import claim_output, write_text
    from ddim.images import save_grid

    check_seeds(args.seed, 1)
    output, record_path = picture_output(args.out)
    eps_model, config, device, precision, betas, steps, skip, seqs = load_ode_run(args)
    settings = {**model_settings(args, config, precision), "seed": args.seed, "steps": steps,
                "skip": skip, "show": args.show}
    with claim_output(output, settings, overwrite=args.overwrite):
        shape = (config.model.in_channels, config.data.image_size, config.data.image_size)
        x_T = seed_latents([args.seed], shape, device)
        rows = [trajectory_row(eps_model, x_T, betas, steps=S, skip=skip, show=args.show)
                for S in progress_bar(steps, desc="trajectories", unit="S")]
        grid, width = pad_rows(rows)
        save_grid(grid, args.out, nrow=width)
        record = {
            **model_record(args, config, device, precision), "seed": args.seed, "steps": steps,
            "skip": skip, "eta": 0.0, "show": args.show,
            "shown_step_indices": {S: shown_steps(len(q), args.show) for S, q in zip(steps, seqs)},
            "timesteps": {S: seq for S, seq in zip(steps, seqs)},
            "grid": "one row per S: predicted x0 after the shown steps, then the final image",
        }
        write_text(record_path, json.dumps(record, indent=2))
    print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    return 0
