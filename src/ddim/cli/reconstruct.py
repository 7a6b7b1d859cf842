"""`ddim reconstruct`: the paper's Table 2, encode with S steps and decode with S steps (η = 0)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ddim.cli._common import (
    add_images_arguments,
    add_model_arguments,
    add_ode_arguments,
    add_overwrite_argument,
    check_count,
    model_from_flags,
    settings_from_flags,
)
from ddim.progress import progress_bar

HELP = "Table 2: reconstruction MSE of encode-then-decode with S steps each (η = 0), per S."
EXAMPLE = (
    "ddim reconstruct --ckpt ckpt.safetensors --images data/cifar-10-batches-py --subdir test "
    "--n 64 --steps 10 20 50 100 -o recon"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim reconstruct`."""
    add_model_arguments(parser)
    add_images_arguments(parser, n_default=64)
    add_ode_arguments(parser, steps_nargs="+")
    parser.add_argument("--show", type=int, default=8, help="images per row of the grid (8)")
    parser.add_argument("-o", "--out", default="reconstruct",
                        help="folder: reconstruct.json, reconstruct.md, reconstruct.png")
    add_overwrite_argument(parser)


def run(args) -> int:
    """Reconstruct --n images at each S; print and write the MSE table, JSON record and grid."""
    from ddim.data import SELECTION
    from ddim.experiments.paper import reconstruction_study
    from ddim.files import claim_output, folder_output
    from ddim.sampling.inputs import select_images

    check_count(args.show, "--show")
    model = model_from_flags(args)
    settings = settings_from_flags(args, model, eta=0.0)  # the ODE: DDIM with η = 0
    steps, skip = [s.steps for s in settings.samplers], settings.samplers[0].skip
    chosen = select_images(args.images, subdir=args.subdir, n=args.n, resolution=settings.shape[1])
    images = chosen.images
    recorded = {**model.settings(), "images": chosen.dataset, "n": len(images),
                "selection": SELECTION, "steps": steps, "skip": skip, "show": args.show}
    output = folder_output(args.out, ("reconstruct.md", "reconstruct.png", "reconstruct.json"),
                           command="reconstruct", reused=())  # fmt: skip
    with claim_output(output, recorded, overwrite=args.overwrite):
        with progress_bar(total=len(images) * len(steps), unit="img", desc="reconstructing") as bar:
            rows, recs = reconstruction_study(
                model.eps_model, images, settings.samplers, batch=settings.batch,
                device=model.device, progress=bar.update,
            )  # fmt: skip
        record = {
            **model.record(),
            "images": str(args.images), "subdir": args.subdir, "n": len(images),
            "indices": chosen.indices, "skip": skip, "eta": 0.0, "clip_x0": False,
            "mse": "mean over images and dimensions of ((x_rec+1)/2 - (x+1)/2)^2, float outputs "
                   "before uint8 rounding, x = uint8/127.5 - 1",
            "grid": "row 0: originals; then one row per S, in the order of 'results'",
            "results": rows,
        }
        _write_outputs(Path(args.out), images, recs, record, args.show)
    return 0


def _write_outputs(out: Path, images, recs, record: dict, show: int) -> None:
    """reconstruct.md (printed too), reconstruct.png and reconstruct.json, each atomically."""
    from ddim.experiments.paper import reconstruction_markdown
    from ddim.files import write_text
    from ddim.images import save_grid

    table = reconstruction_markdown(record["results"], len(images))
    print(table)
    write_text(out / "reconstruct.md", table)
    k = min(show, len(images))
    save_grid(torch.cat([images[:k], *(r[:k] for r in recs)]), out / "reconstruct.png", nrow=k)
    write_text(out / "reconstruct.json", json.dumps(record, indent=2))
    print(f"wrote reconstruct.md, reconstruct.json, reconstruct.png to {out}", file=sys.stderr)
