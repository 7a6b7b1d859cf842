"""`ddim sample`: images from a checkpoint with DDIM (any S, η, skip) or DDPM, on CPU or GPUs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ddim.cli._common import (
    add_model_arguments,
    add_sampler_arguments,
    load_for_sampling,
    sampler_spec,
)
from ddim.errors import DdimError

HELP = "Sample images from a checkpoint: DDIM (eq. 12) or DDPM; PNG grid, PNG folder, .npz."
EXAMPLE = (
    "ddim sample --ckpt runs/00000-cifar10/checkpoints/ckpt-00800000.safetensors "
    "--n 64 --steps 50 --eta 0 -o samples"
)




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








def run(args) -> int:
    """Sample exactly --n images into --out, resumably, split across torchrun ranks."""
    from ddim.diffusion.schedule import timesteps
    from ddim.files import file_sha256
    from ddim.generate import generate_to_shards, read_shards
    from ddim.images import save_grid, save_npz, save_pngs

    if args.n < 1:
        raise DdimError(f"--n must be >= 1, got {args.n}")
    eps_model, config, device, amp, rank, world = load_for_sampling(args)
    spec = sampler_spec(args, config)
    betas = config.diffusion.betas()
    calls = spec.network_calls(len(betas))
    batch = config.sampling.batch_size if args.batch is None else args.batch
    if batch < 1:
        raise DdimError(f"--batch must be >= 1, got {batch}")
    out = Path(args.out)
    seeds = list(range(args.seed, args.seed + args.n))
    shape = (config.model.in_channels, config.data.image_size, config.data.image_size)
    bar = tqdm(total=args.n, unit="img", disable=rank != 0, desc=f"sampling S={calls}")
    start = time.perf_counter()
    made = generate_to_shards(
        eps_model,
        betas,
        spec,
        seeds,
        shape,
        out,
        batch=batch,
        device=device,
        rank=rank,
        world_size=world,
        progress=lambda k: bar.update(k * world),
    )
    bar.close()
    seconds = time.perf_counter() - start
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        return 0
    images = read_shards(out, args.n)
    save_grid(images[:64], out / "grid.png")
    if not args.no_npz:
        save_npz(images, out / "samples.npz")
    if args.png:
        save_pngs(images, out / "png")
    record = {
        "checkpoint": str(args.ckpt),
        "checkpoint_sha256": file_sha256(args.ckpt),
        "weights": "raw" if args.raw else "ema",
        "n": args.n,
        "seeds": [seeds[0], seeds[-1]],
        "sampler": spec.__dict__,
        "network_calls_per_image": calls,
        "timesteps": timesteps(len(betas), spec.steps, spec.skip),
        "batch": batch,
        "device": str(device),
        "ranks": world,
        "bf16": amp,
        "images_made_this_run": made * world,
        "seconds": seconds,
        "images_per_s": made * world / seconds if made else None,
        "config": config.to_dict(),
    }
    (out / "sample.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    print(
        f"wrote {args.n} images to {out} (grid.png"
        f"{'' if args.no_npz else ', samples.npz'}{', png/' if args.png else ''})",
        file=sys.stderr,
    )
    return 0
