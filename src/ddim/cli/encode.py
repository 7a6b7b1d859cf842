"""`ddim encode`: images → their DDIM latents x_T (eqs. 13/14), saved as float32 NCHW in an .npz."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ddim.cli._common import (
    SELECTION,
    add_images_arguments,
    add_model_arguments,
    add_ode_arguments,
    add_overwrite_argument,
    dataset_images,
    load_for_sampling,
    model_record,
    model_settings,
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
    from ddim.diffusion.samplers import encode
    from ddim.diffusion.schedule import timesteps
    from ddim.experiments.paper import ode_images
    from ddim.files import claim_output, file_output

    eps_model, config, device, precision, _, _ = load_for_sampling(args)
    betas = config.diffusion.betas()
    steps = config.sampling.steps if args.steps is None else args.steps
    skip = args.skip or config.sampling.skip
    seq = timesteps(len(betas), steps, skip)  # validates S before any work
    images, indices, dataset = dataset_images(args, config)
    settings = {**model_settings(args, config, precision),
                "images": json.loads(dataset.fingerprint()), "n": len(images),
                "selection": SELECTION, "steps": steps,
                "skip": skip}
    with claim_output(file_output(args.out), settings, overwrite=args.overwrite):
        with progress_bar(total=len(images), unit="img", desc=f"encoding S={len(seq)}") as bar:
            latents = ode_images(encode, eps_model, images, betas, steps=steps, skip=skip,
                                 batch=args.batch or config.sampling.batch_size, device=device,
                                 progress=bar.update)
        record = {**model_record(args, config, device, precision), "images": str(args.images),
                  "subdir": args.subdir, "n": len(images), "steps": steps, "skip": skip,
                  "timesteps": seq, "network_calls_per_image": len(seq)}
        _save_latents(Path(args.out), latents, indices, record)
    print(f"wrote {len(images)} latents to {args.out}", file=sys.stderr)
    return 0


def _save_latents(path: Path, latents, indices, record: dict) -> None:
    """The .npz of float32 latents, their dataset indices and the run's record, atomically."""
    from ddim.files import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" to the name
            np.savez(f, latents=latents.numpy().astype(np.float32), indices=np.asarray(indices),
                     settings=np.str_(json.dumps(record)))

    atomic_write(path, write)
