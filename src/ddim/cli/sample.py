"""`ddim sample`: images from a checkpoint with DDIM (any S, η, skip) or DDPM, on CPU or GPUs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ddim.errors import DdimError

HELP = "Sample images from a checkpoint: DDIM (eq. 12) or DDPM; PNG grid, PNG folder, .npz."
EXAMPLE = (
    "ddim sample --ckpt runs/00000-cifar10/checkpoints/ckpt-00800000.safetensors "
    "--n 64 --steps 50 --eta 0 -o samples"
)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--ckpt, --config, --raw, --device, --no-amp: shared by the commands that load a model."""
    parser.add_argument(
        "--ckpt",
        help="checkpoint: ours, official ckpt.pth, .ckpt (default: the bundled model, if any)",
    )
    parser.add_argument("--config", help="config name/YAML for checkpoints that carry none")
    parser.add_argument("--raw", action="store_true", help="raw weights instead of EMA")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    parser.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 on CUDA")


def add_sampler_arguments(parser: argparse.ArgumentParser, steps_nargs=None) -> None:
    """--steps, --skip, --eta, --sampler, --variance, --clip-x0."""
    parser.add_argument(
        "--steps",
        type=int,
        nargs=steps_nargs,
        default=None,
        help="S, network calls per image (default: the config's)",
    )
    parser.add_argument(
        "--skip",
        choices=["uniform", "quad", "trailing"],
        help="timestep sub-sequence (default: the config's)",
    )
    parser.add_argument("--eta", type=float, help="η of eq. 16: 0 DDIM … 1 DDPM-like")
    parser.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    parser.add_argument(
        "--variance",
        choices=["small", "large"],
        default="small",
        help="DDPM variance: small = β̃, large = β (the paper's σ̂)",
    )
    parser.add_argument(
        "--clip-x0",
        choices=["auto", "on", "off"],
        default="auto",
        help="clip predicted x0 to [-1, 1] (auto: off for DDIM, on for DDPM)",
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


def load_for_sampling(args):
    """(eps_model, config, device, amp, rank, world size) for the checkpoint named by --ckpt."""
    from ddim.checkpoint import load_checkpoint, model_from_checkpoint
    from ddim.generate import eps_model_for
    from ddim.train import distributed_context

    rank, world_size, device = distributed_context(
        torch.device(args.device) if args.device else None
    )
    args.ckpt = args.ckpt or str(bundled_checkpoint())
    checkpoint = load_checkpoint(args.ckpt, config=args.config)
    net = model_from_checkpoint(checkpoint, use_ema=not args.raw, device=device)
    config = checkpoint.config or config_for_foreign(checkpoint)
    amp = device.type == "cuda" and not args.no_amp
    eps_model = eps_model_for(net, amp=amp, channels_last=device.type == "cuda")
    return eps_model, config, device, amp, rank, world_size


BUNDLED = "cifar10-16px.safetensors"


def bundled_checkpoint() -> Path:
    """The model that ships with the package (used when no --ckpt is given)."""
    path = Path(__file__).resolve().parents[1] / "assets" / BUNDLED
    if not path.is_file():
        raise DdimError("no --ckpt given, and this installation has no bundled model")
    return path


def config_for_foreign(checkpoint):
    """A config for weights that carry none: their inferred network and the paper's diffusion
    (linear β from 1e-4 to 0.02, T = 1000)."""
    from ddim.config import Config, DataConfig

    model = checkpoint.model_config
    data = DataConfig(image_size=checkpoint.image_size, channels=model.in_channels)
    return Config(model=model, data=data)


def sampler_spec(args, config, steps=None):
    """The SamplerSpec from the flags, defaults from the config's sampling section."""
    from ddim.generate import SamplerSpec

    s = config.sampling
    clip = {"auto": None, "on": True, "off": False}[args.clip_x0]
    eta = s.eta if args.eta is None else args.eta
    if eta < 0:
        raise DdimError(f"--eta must be >= 0, got {eta}")
    return SamplerSpec(
        steps=next(v for v in (steps, args.steps, s.steps) if v is not None),
        skip=args.skip or s.skip,
        eta=eta,
        kind=args.sampler,
        variance=args.variance,
        clip_x0=clip,
    )


def run(args) -> int:
    """Sample exactly --n images into --out, resumably, split across torchrun ranks."""
    from ddim.generate import betas_of, file_sha256, generate_to_shards, read_shards
    from ddim.images import save_grid, save_npz, save_pngs
    from ddim.schedule import timesteps

    if args.n < 1:
        raise DdimError(f"--n must be >= 1, got {args.n}")
    eps_model, config, device, amp, rank, world = load_for_sampling(args)
    spec = sampler_spec(args, config)
    betas = betas_of(config)
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
