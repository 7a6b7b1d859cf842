"""`ddim encode`: images → their DDIM latents x_T (eqs. 13/14), saved as float32 NCHW in an .npz."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ddim.errors import DdimError

HELP = "Encode images to DDIM latents x_T (the ODE of eqs. 13/14 run upward); writes an .npz."
EXAMPLE = (
    "ddim encode --ckpt ckpt.safetensors --images data/cifar-10-batches-py --subdir test "
    "--n 64 --steps 100 -o latents.npz"
)


def add_images_arguments(parser: argparse.ArgumentParser, n_default: int | None = None) -> None:
    """--images, --subdir, --n, --batch: which dataset images to read, and how many at once."""
    parser.add_argument("--images", required=True,
                        help="dataset: image folder, zip, cifar-10-batches-py folder, NHWC .npz")
    parser.add_argument("--subdir", help="part of the dataset (CIFAR-10: train/test; zip folder)")
    parser.add_argument("--n", type=int, default=n_default,
                        help=f"use the first N images (default: {n_default or 'all'})")
    parser.add_argument("--batch", type=int, help="images per batch (default: the config's)")


def add_ode_arguments(parser: argparse.ArgumentParser, steps_nargs=None) -> None:
    """--steps and --skip of the deterministic sampler (η = 0)."""
    parser.add_argument("--steps", type=int, nargs=steps_nargs, help="S (default: the config's)")
    parser.add_argument("--skip", choices=["uniform", "quad", "trailing"],
                        help="timestep sub-sequence (default: the config's)")


def dataset_images(args, config):
    """(uint8 images, their indices) from --images/--subdir, the first --n, at the model's size."""
    from ddim.data import open_dataset
    from ddim.experiments import take_images

    dataset = open_dataset(args.images, subdir=args.subdir,
                           resolution=config.data.image_size, progress=False)
    n = len(dataset) if args.n is None else args.n
    if n < 1:
        raise DdimError(f"--n must be >= 1, got {n}")
    indices = list(range(min(n, len(dataset))))
    return take_images(dataset, indices), indices


def load_ode_run(args):
    """(eps_model, config, device, amp, betas, steps, skip, seqs) for the commands that decode one
    input at several S (`reconstruct`, `trajectory`); every S is validated before any work."""
    from ddim.cli.sample import load_for_sampling
    from ddim.generate import betas_of
    from ddim.schedule import timesteps

    if args.show < 1:
        raise DdimError(f"--show must be >= 1, got {args.show}")
    eps_model, config, device, amp, _, _ = load_for_sampling(args)
    betas = betas_of(config)
    steps = [config.sampling.steps] if args.steps is None else args.steps
    skip = args.skip or config.sampling.skip
    seqs = [timesteps(len(betas), S, skip) for S in steps]
    return eps_model, config, device, amp, betas, steps, skip, seqs


def model_record(args, config, device, amp) -> dict:
    """What identifies the model run: checkpoint + hash, EMA or raw, device, bf16."""
    from ddim.generate import file_sha256

    return {
        "checkpoint": str(args.ckpt),
        "checkpoint_sha256": file_sha256(args.ckpt),
        "weights": "raw" if args.raw else "ema",
        "device": str(device),
        "bf16": amp,
        "beta_schedule": config.diffusion.beta_schedule,
        "num_diffusion_timesteps": config.diffusion.num_diffusion_timesteps,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim encode`."""
    from ddim.cli.sample import add_model_arguments

    add_model_arguments(parser)
    add_images_arguments(parser)
    add_ode_arguments(parser)
    parser.add_argument("-o", "--out", default="latents.npz",
                        help="output .npz: latents (N,C,H,W) float32, indices, settings (JSON)")


def run(args) -> int:
    """Encode the images and write the latents with their indices and settings."""
    from ddim.cli.sample import load_for_sampling
    from ddim.experiments import encode_images
    from ddim.generate import betas_of
    from ddim.schedule import timesteps

    eps_model, config, device, amp, _, _ = load_for_sampling(args)
    betas = betas_of(config)
    steps = config.sampling.steps if args.steps is None else args.steps
    skip = args.skip or config.sampling.skip
    seq = timesteps(len(betas), steps, skip)  # validates S before any work
    images, indices = dataset_images(args, config)
    with tqdm(total=len(images), unit="img", desc=f"encoding S={len(seq)}") as bar:
        latents = encode_images(eps_model, images, betas, steps=steps, skip=skip,
                                batch=args.batch or config.sampling.batch_size, device=device,
                                progress=bar.update)
    settings = {**model_record(args, config, device, amp), "images": str(args.images),
                "subdir": args.subdir, "n": len(images), "steps": steps, "skip": skip,
                "timesteps": seq, "network_calls_per_image": len(seq)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:  # a file object: numpy adds no ".npz" to the name
        np.savez(f, latents=latents.numpy().astype(np.float32), indices=np.asarray(indices),
                 settings=np.str_(json.dumps(settings)))
    print(f"wrote {len(images)} latents to {out}", file=sys.stderr)
    return 0
