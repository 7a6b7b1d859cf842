"""`ddim encode`: images → their DDIM latents x_T (eqs. 13/14), saved as float32 NCHW in an .npz."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ddim.cli._common import (
    add_images_arguments,
    add_model_arguments,
    add_ode_arguments,
    add_overwrite_argument,
    model_from_flags,
    settings_from_flags,
)
from ddim.progress import progress_bar

HELP = "Encode images to DDIM latents x_T (the ODE of eqs. 13/14 run upward); writes an .npz."
EXAMPLE = (
    "ddim encode --ckpt ckpt.safetensors --images data/cifar-10-batches-py --subdir test "
    "--n 64 --steps 100 -o latents.npz"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim encode`."""
    add_model_arguments(parser)
    add_images_arguments(parser)
    add_ode_arguments(parser)
    parser.add_argument("-o", "--out", default="latents.npz",
                        help="output .npz: latents (N,C,H,W) float32, indices, settings (JSON)")
    add_overwrite_argument(parser)


def run(args) -> int:
    """Encode the images and write the latents with their indices and settings."""
    from ddim.data import SELECTION
    from ddim.files import claim_output, file_output
    from ddim.sampling.inputs import select_images
    from ddim.sampling.runners import encode_images

    model = model_from_flags(args)
    settings = settings_from_flags(args, model.config, eta=0.0)  # the ODE: DDIM with η = 0
    sampler = settings.sampler
    chosen = select_images(args.images, subdir=args.subdir, n=args.n, resolution=settings.shape[1])
    recorded = {**model.settings(), "images": chosen.dataset, "n": len(chosen.images),
                "selection": SELECTION, "steps": sampler.steps, "skip": sampler.skip}
    with claim_output(file_output(args.out, command="encode"), recorded, overwrite=args.overwrite):
        with progress_bar(total=len(chosen.images), unit="img",
                          desc=f"encoding {sampler.label}") as bar:  # fmt: skip
            latents = encode_images(model.eps_model, sampler, chosen.images, batch=settings.batch,
                                    device=model.device, progress=bar.update)  # fmt: skip
        record = {**model.record(), "images": str(args.images), "subdir": args.subdir,
                  "n": len(chosen.images), "steps": sampler.steps, "skip": sampler.skip,
                  "timesteps": list(sampler.timesteps),
                  "network_calls_per_image": sampler.network_calls}
        _save_latents(Path(args.out), latents, chosen.indices, record)
    print(f"wrote {len(chosen.images)} latents to {args.out}", file=sys.stderr)
    return 0


def _save_latents(path: Path, latents, indices, record: dict) -> None:
    """The .npz of float32 latents, their dataset indices and the run's record, atomically."""
    from ddim.files import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" to the name
            np.savez(f, latents=latents.numpy().astype(np.float32), indices=np.asarray(indices),
                     settings=np.str_(json.dumps(record)))

    atomic_write(path, write)
