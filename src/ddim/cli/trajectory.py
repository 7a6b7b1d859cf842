"""`ddim trajectory`: the same x_T sampled with different S (the paper's Figs. 4/5 consistency)."""

from __future__ import annotations

import argparse
import json
import sys

from ddim.cli._common import (
    add_model_arguments,
    add_ode_arguments,
    add_overwrite_argument,
    check_count,
    check_seeds,
    model_from_flags,
    picture_output,
    settings_from_flags,
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
                        help="picture (.png, or .jpg/.jpeg for JPEG): one row per S, x0 "
                             "predictions then the final image; + .json")
    add_overwrite_argument(parser)


def run(args) -> int:
    """Decode the seed's x_T at each S and write the grid and a JSON record."""
    from ddim.files import claim_output, write_text
    from ddim.images import save_grid
    from ddim.sampling.runners import pad_rows, shown_steps, trajectory_row
    from ddim.sampling.seeds import seed_latents

    check_seeds(args.seed, 1)
    check_count(args.show, "--show")
    model = model_from_flags(args)
    settings = settings_from_flags(args, model, eta=0.0)  # the ODE: DDIM with η = 0
    steps, skip = [s.steps for s in settings.samplers], settings.samplers[0].skip
    recorded = {**model.settings(), "seed": args.seed, "steps": steps, "skip": skip,
                "show": args.show}  # fmt: skip
    output, record_path = picture_output(args.out, "trajectory")  # before any image is made
    with claim_output(output, recorded, overwrite=args.overwrite):
        x_T = seed_latents([args.seed], settings.shape, model.device)
        rows = [trajectory_row(model.eps_model, sampler, x_T, args.show)
                for sampler in progress_bar(settings.samplers, desc="trajectories", unit="S")]
        grid, width = pad_rows(rows)
        save_grid(grid, args.out, nrow=width)
        record = {
            **model.record(), "seed": args.seed, "steps": steps, "skip": skip, "eta": 0.0,
            "show": args.show,
            "shown_step_indices": {s.steps: shown_steps(s.network_calls, args.show)
                                   for s in settings.samplers},
            "timesteps": {s.steps: list(s.timesteps) for s in settings.samplers},
            "grid": "one row per S: predicted x0 after the shown steps, then the final image",
        }  # fmt: skip
        write_text(record_path, json.dumps(record, indent=2))
    print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    return 0
