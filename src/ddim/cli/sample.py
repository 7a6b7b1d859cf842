"""`ddim sample`: images from a checkpoint with DDIM (any S, η, skip) or DDPM, on CPU or GPUs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ddim.cli._common import (
    add_model_arguments,
    add_overwrite_argument,
    add_sampler_arguments,
    check_count,
    check_image_memory,
    check_seeds,
    load_for_sampling,
    model_record,
    model_settings,
    sampler_spec,
    spec_record,
)
from ddim.progress import progress_bar

HELP = "Sample images from a checkpoint: DDIM (eq. 12) or DDPM; PNG grid, PNG folder, .npz."
EXAMPLE = (
    "ddim sample --ckpt runs/00000-cifar10/checkpoints/ckpt-00800000.safetensors "
    "--n 64 --steps 50 --eta 0 -o samples"
)


# What `ddim sample` owns in its output folder (see ddim.files.outputs).
OWNED = ("parts", "grid.png", "samples.npz", "png", "sample.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim sample`."""
    add_model_arguments(parser)
    add_sampler_arguments(parser)
    parser.add_argument("--n", type=int, default=64, help="number of images (exactly)")
    parser.add_argument("--seed", type=int, default=0, help="image k uses seed + k")
    parser.add_argument("--batch", type=int, help="images per batch (default: the config's)")
    parser.add_argument("-o", "--out", default="samples", help="output folder (default samples)")
    parser.add_argument("--png", action="store_true", help="also write one PNG per image")
    parser.add_argument("--no-npz", action="store_true", help="skip OUT/samples.npz")
    add_overwrite_argument(parser)


def run(args) -> int:
    """Sample exactly --n images into --out, resumably, split across torchrun ranks.

    The folder's record holds everything that decides the images except --n and --batch: a rerun
    with the same settings reuses its shards and makes only the missing images (a larger --n
    grows the folder); other settings are refused unless --overwrite.
    """
    from ddim.files import claim_output, folder_output

    check_count(args.n, "--n")
    check_seeds(args.seed, args.n)
    if args.batch is not None:
        check_count(args.batch, "--batch")
    eps_model, config, device, precision, rank, world = load_for_sampling(args)
    spec = sampler_spec(args, config)
    spec.network_calls(config.diffusion.num_diffusion_timesteps)  # validates S before any work
    shape = (config.model.in_channels, config.data.image_size, config.data.image_size)
    check_image_memory(args.n, shape, "--n")
    settings = {**model_settings(args, config, precision), "sampler": spec_record(spec),
                "seed": args.seed, "image_shape": list(shape)}
    out = folder_output(args.out, OWNED)
    with claim_output(out, settings, overwrite=args.overwrite, active=rank == 0):
        if world > 1:
            torch.distributed.barrier()  # rank 0 has checked the folder before anyone writes
        made, seconds = _generate(args, eps_model, config, spec, device, rank, world)
        if world > 1:
            torch.distributed.barrier()
        if rank == 0:
            _write_outputs(args, config, spec, device, precision, world, made, seconds)
    return 0


def _generate(args, eps_model, config, spec, device, rank: int, world: int) -> tuple[int, float]:
    """This rank's missing shards; (images made, seconds)."""
    from ddim.generate import generate_to_shards

    betas = config.diffusion.betas()
    batch = config.sampling.batch_size if args.batch is None else args.batch
    shape = (config.model.in_channels, config.data.image_size, config.data.image_size)
    calls = spec.network_calls(len(betas))
    start = time.perf_counter()
    with progress_bar(
        total=args.n, unit="img", disable=rank != 0, desc=f"sampling S={calls}"
    ) as bar:
        made = generate_to_shards(
            eps_model, betas, spec, range(args.seed, args.seed + args.n), shape, args.out,
            batch=batch, device=device, rank=rank, world_size=world,
            progress=lambda k: bar.update(k * world),
        )  # fmt: skip
    return made, time.perf_counter() - start


def _write_outputs(args, config, spec, device, precision, world, made: int, seconds: float) -> None:
    """grid.png, samples.npz, png/ and sample.json from the shards (rank 0)."""
    from ddim.diffusion.schedule import timesteps
    from ddim.files import write_text
    from ddim.generate import read_shards
    from ddim.images import save_grid, save_npz, save_pngs

    out = Path(args.out)
    images = read_shards(out, args.n)
    save_grid(images[:64], out / "grid.png")
    if not args.no_npz:
        save_npz(images, out / "samples.npz")
    if args.png:
        save_pngs(images, out / "png")
    T = config.diffusion.num_diffusion_timesteps
    record = {
        **model_record(args, config, device, precision),
        "n": args.n,
        "seeds": [args.seed, args.seed + args.n - 1],
        "sampler": spec_record(spec),
        "network_calls_per_image": spec.network_calls(T),
        "timesteps": timesteps(T, spec.steps, spec.skip),
        "batch": config.sampling.batch_size if args.batch is None else args.batch,
        "ranks": world,
        "images_made_this_run": made * world,
        "seconds": seconds,
        "images_per_s": made * world / seconds if made else None,
        "config": config.to_dict(),
    }
    write_text(out / "sample.json", json.dumps(record, indent=2))
    print(
        f"wrote {args.n} images to {out} (grid.png"
        f"{'' if args.no_npz else ', samples.npz'}{', png/' if args.png else ''})",
        file=sys.stderr,
    )
