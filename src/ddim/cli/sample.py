"""`ddim sample`: images from a checkpoint with DDIM (any S, η, skip) or DDPM, on CPU or GPUs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ddim.cli._common import (
    add_count_argument,
    add_model_arguments,
    add_overwrite_argument,
    add_sampler_arguments,
    check_count,
    check_image_memory,
    check_seeds,
    count_batch,
    model_from_flags,
    settings_from_flags,
)
from ddim.progress import progress_bar

HELP = "Sample images from a checkpoint: DDIM (eq. 12) or DDPM; PNG grid, PNG folder, .npz."
EXAMPLE = (
    "ddim sample --ckpt runs/00000-cifar10/checkpoints/ckpt-00800000.safetensors "
    "--n 64 --steps 50 --eta 0 -o samples"
)


# What `ddim sample` owns in its output folder (see ddim.files.outputs); a rerun continues its
# shards and makes the rest again.
OWNED = ("parts", "grid.png", "samples.npz", "png", "sample.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim sample`."""
    add_model_arguments(parser)
    add_sampler_arguments(parser)
    add_count_argument(parser, 64, "number of images (exactly; default 64)")
    parser.add_argument("--seed", type=int, default=0, help="image k uses seed + k")
    parser.add_argument("-o", "--out", default="samples", help="output folder (default samples)")
    parser.add_argument("--png", action="store_true", help="also write one PNG per image")
    parser.add_argument("--no-npz", action="store_true", help="skip OUT/samples.npz")
    add_overwrite_argument(parser)


def run(args) -> int:
    """Sample exactly --n images into --out, resumably, split across torchrun ranks.

    The run is decided once, here: the model, then the settings (sampler and its plan over τ,
    batch, image shape), recorded as they are. The folder's record holds everything that decides
    the images except --n and --batch: a rerun with the same settings reuses its shards and makes
    only the missing images (a larger --n grows the folder); other settings are refused unless
    --overwrite.
    """
    from ddim.device import distributed_context, parse_device
    from ddim.files import claim_output, folder_output

    check_count(args.n, "--n")
    check_seeds(args.seed, args.n)
    rank, world, device = distributed_context(parse_device(args.device))
    model = model_from_flags(args, device)
    settings = settings_from_flags(args, model)
    check_image_memory(args.n, settings.shape, "--n")
    recorded = {**model.settings(), "sampler": settings.sampler.record(), "seed": args.seed,
                "image_shape": list(settings.shape)}  # fmt: skip
    out = folder_output(args.out, OWNED, command="sample", reused=("parts",))
    with claim_output(out, recorded, overwrite=args.overwrite, active=rank == 0):
        if world > 1:
            torch.distributed.barrier()  # rank 0 has checked the folder before anyone writes
        made, seconds = _generate(args, model, settings, rank, world)
        if world > 1:
            torch.distributed.barrier()
        if rank == 0:
            _write_outputs(args, model, settings, world, made, seconds)
    return 0


def _generate(args, model, settings, rank: int, world: int) -> tuple[int, float]:
    """This rank's missing shards; (images made, seconds)."""
    from ddim.sampling.shards import generate_to_shards

    sampler = settings.sampler
    start = time.perf_counter()
    with progress_bar(total=args.n, unit="img", disable=rank != 0,
                      desc=f"sampling {sampler.label}") as bar:  # fmt: skip
        made = generate_to_shards(
            model.eps_model, sampler, range(args.seed, args.seed + args.n), settings.shape,
            args.out, batch=settings.batch, device=model.device, rank=rank, world_size=world,
            progress=lambda made, found: count_batch(bar, made * world, found * world),
        )  # fmt: skip
    return made, time.perf_counter() - start


def _write_outputs(args, model, settings, world, made: int, seconds: float) -> None:
    """grid.png, samples.npz, png/ and sample.json from the shards (rank 0)."""
    from ddim.files import write_text
    from ddim.images import save_grid, save_npz, save_pngs
    from ddim.sampling.shards import read_shards

    out = Path(args.out)
    images = read_shards(out, args.n)
    save_grid(images[:64], out / "grid.png")
    if not args.no_npz:
        save_npz(images, out / "samples.npz")
    if args.png:
        save_pngs(images, out / "png")
    sampler = settings.sampler
    record = {
        **model.record(),
        "n": args.n,
        "seeds": [args.seed, args.seed + args.n - 1],
        "sampler": sampler.record(),
        "network_calls_per_image": sampler.network_calls,
        "timesteps": list(sampler.timesteps),
        "batch": settings.batch,
        "ranks": world,
        "images_made_this_run": made * world,
        "seconds": seconds,
        "images_per_s": made * world / seconds if made else None,
        "config": model.config.to_dict(),
    }
    write_text(out / "sample.json", json.dumps(record, indent=2))
    print(
        f"wrote {args.n} images to {out} (grid.png"
        f"{'' if args.no_npz else ', samples.npz'}{', png/' if args.png else ''})",
        file=sys.stderr,
    )
