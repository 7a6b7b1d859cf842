"""`ddim encode`: images → their DDIM latents x_T (eqs. 13/14), saved as float32 NCHW in an .npz."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from ddim.cli._common import (
    add_images_arguments,
    add_model_arguments,
    add_ode_arguments,
    add_overwrite_argument,
    count_batch,
    model_from_flags,
    settings_from_flags,
)
from ddim.errors import DdimError
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
                        help="output .npz: latents (N,C,H,W) float32, indices, settings (JSON); "
                             "made in shards beside it (NAME.parts/), so a rerun resumes")
    add_overwrite_argument(parser)


def run(args) -> int:
    """Encode the images and write the latents with their indices and settings; resumable.

    Each batch's latents go to a shard beside the output (`NAME.parts/`) as they are made: a
    killed run's rerun with the same settings encodes only the images no shard holds, then the
    .npz is written from the shards and they are removed."""
    from ddim.data import SELECTION
    from ddim.files import claim_output
    from ddim.sampling.inputs import select_images
    from ddim.sampling.shards import encode_to_shards, read_latent_shards

    output = latents_output(args.out)
    model = model_from_flags(args)
    settings = settings_from_flags(args, model, eta=0.0)  # the ODE: DDIM with η = 0
    sampler = settings.sampler
    chosen = select_images(args.images, subdir=args.subdir, n=args.n, resolution=settings.shape[1])
    recorded = {**model.settings(), "images": chosen.dataset, "n": len(chosen.images),
                "selection": SELECTION, "steps": sampler.steps, "skip": sampler.skip}
    parts = output.folder / output.names[1]
    with claim_output(output, recorded, overwrite=args.overwrite):
        with progress_bar(total=len(chosen.images), unit="img",
                          desc=f"encoding {sampler.label}") as bar:  # fmt: skip
            encode_to_shards(model.eps_model, sampler, chosen.images, parts,
                             batch=settings.batch, device=model.device,
                             progress=lambda made, found: count_batch(bar, made, found))
        record = {**model.record(), "images": str(args.images), "subdir": args.subdir,
                  "n": len(chosen.images), "steps": sampler.steps, "skip": sampler.skip,
                  "timesteps": list(sampler.timesteps),
                  "network_calls_per_image": sampler.network_calls}
        latents = read_latent_shards(parts, len(chosen.images))
        _save_latents(Path(args.out), latents, chosen.indices, record)
        shutil.rmtree(parts)  # the .npz holds them all now
    print(f"wrote {len(chosen.images)} latents to {args.out}", file=sys.stderr)
    return 0


def latents_output(path: str):
    """The output of `ddim encode`: an .npz, and its shards beside it while it is made
    (`NAME.parts/`, continued by a rerun); another suffix is refused before any work."""
    from ddim.files import file_output

    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise DdimError(f"-o {str(path)!r}: latents are written as an .npz (NumPy arrays "
                        f"latents, indices, settings); give a .npz name")  # fmt: skip
    parts = f"{path.name}.parts"
    return file_output(path, beside=(parts,), command="encode", reused=(parts,))


def _save_latents(path: Path, latents, indices, record: dict) -> None:
    """The .npz of float32 latents, their dataset indices and the run's record, atomically."""
    from ddim.files import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" to the name
            np.savez(f, latents=latents.numpy().astype(np.float32), indices=np.asarray(indices),
                     settings=np.str_(json.dumps(record)))

    atomic_write(path, write)
