"""What the commands share: the flags that load a model, pick a sampler, read images or name an
output, the checks of numbers from the command line, and the loaders behind them. Commands import
this module, never each other."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddim.diffusion.samplers import check_eta
from ddim.diffusion.schedule import SKIP_KINDS
from ddim.errors import DdimError
from ddim.network.precision import PRECISIONS, describe

# How --n picks images from a dataset (recorded with the outputs that depend on it).
SELECTION = "evenly spread: indices k*size//n"
SPREAD_HELP = "indices ⌊k·size/N⌋, so class-sorted folders keep every class"

# --- flags -------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--ckpt, --config, --raw, --device, --precision, --fp32, --compile: shared by the commands
    that load a model."""
    parser.add_argument(
        "--ckpt",
        help="checkpoint: ours, official ckpt.pth, .ckpt (default: the bundled model, if any)",
    )
    parser.add_argument("--config", help="config name/YAML for checkpoints that carry none")
    parser.add_argument("--raw", action="store_true", help="raw weights instead of EMA")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the network's arithmetic: fp32; mixed = bf16 for t < 500, fp32 "
                             "above; bf16 (default auto: mixed on CPUs with native bf16, bf16 "
                             "on CUDA, else fp32; see docs/performance.md)")
    parser.add_argument("--fp32", "--no-amp", dest="fp32", action="store_true",
                        help="the same as --precision fp32")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (pays off for thousands of images)")


def add_skip_argument(parser: argparse.ArgumentParser, choices=SKIP_KINDS, **kwargs) -> None:
    """--skip: the timestep sub-sequence kind."""
    kwargs.setdefault("help", "timestep sub-sequence (default: the config's)")
    parser.add_argument("--skip", choices=list(choices), **kwargs)


def add_sampler_arguments(parser: argparse.ArgumentParser, steps_nargs=None) -> None:
    """--steps, --skip, --eta, --sampler, --variance, --clip-x0."""
    parser.add_argument(
        "--steps",
        type=int,
        nargs=steps_nargs,
        default=None,
        help="S, network calls per image (default: the config's)",
    )
    add_skip_argument(parser)
    parser.add_argument("--eta", type=float, help="η of eq. 16: 0 DDIM … 1 DDPM-like")
    parser.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    parser.add_argument(
        "--variance",
        choices=["small", "large"],
        default=None,
        help="DDPM variance: small = β̃ (default), large = β (the paper's σ̂)",
    )
    parser.add_argument(
        "--clip-x0",
        choices=["auto", "on", "off"],
        default="auto",
        help="clip predicted x0 to [-1, 1] (auto: off for DDIM, on for DDPM)",
    )


def add_images_arguments(parser: argparse.ArgumentParser, n_default: int | None = None) -> None:
    """--images, --subdir, --n, --batch: which dataset images to read, and how many at once."""
    parser.add_argument("--images", required=True,
                        help="dataset: image folder, zip, cifar-10-batches-py folder, NHWC .npz")
    parser.add_argument("--subdir", help="part of the dataset (CIFAR-10: train/test; zip folder)")
    parser.add_argument("--n", type=int, default=n_default,
                        help=f"use N images evenly spread through the dataset (default: "
                             f"{n_default or 'all'}; {SPREAD_HELP})")
    parser.add_argument("--batch", type=int, help="images per batch (default: the config's)")


def add_ode_arguments(parser: argparse.ArgumentParser, steps_nargs=None) -> None:
    """--steps and --skip of the deterministic sampler (η = 0)."""
    parser.add_argument("--steps", type=int, nargs=steps_nargs, help="S (default: the config's)")
    add_skip_argument(parser)


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """--overwrite: replace an output made with other settings (see ddim.files.outputs)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output made with other settings")


def picture_output(path: str):
    """(Output, record path) for a PNG written with a JSON record beside it (NAME.json)."""
    from ddim.files import file_output

    path = Path(path)
    record = path.with_suffix(".json")
    if record == path:
        raise DdimError(f"-o {str(path)!r}: give a .png name (the record goes to NAME.json)")
    return file_output(path, beside=(record.name,)), record


def data_overrides(data: str | None, subdir: str | None) -> list[str]:
    """`data.path` and `data.subdir` overrides from --data and --subdir (the path made absolute)."""
    overrides = [f"data.path={Path(data).resolve()}"] if data else []
    return overrides + ([f"data.subdir={subdir}"] if subdir else [])


# --- numbers from the command line -------------------------------------------------------------

MAX_SEED = 2**63 - 1  # seeds are stored as int64


def check_count(value: int, flag: str, least: int = 1) -> int:
    """An integer option that must be at least `least`; else a DdimError naming the flag."""
    if value < least:
        raise DdimError(f"{flag} must be >= {least}, got {value}")
    return value


def check_seeds(seed: int, count: int, flag: str = "--seed") -> range:
    """Seeds seed, seed + 1, …, seed + count - 1, all in [0, 2^63 - 1]; else a DdimError."""
    if seed < 0 or seed + count - 1 > MAX_SEED:
        raise DdimError(
            f"{flag} {seed}: the seeds {seed} … {seed + count - 1} must lie in [0, 2^63 - 1]"
        )
    return range(seed, seed + count)


def check_image_memory(count: int, shape, flag: str, bytes_per_value: int = 1) -> None:
    """Refuse a count of images (C, H, W) that could not be held in this machine's memory."""
    from ddim.files import check_fits_in_memory

    c, h, w = shape
    check_fits_in_memory(count * c * h * w * bytes_per_value, f"{flag} {count} ({c}x{h}x{w} each)")


# --- loaders -----------------------------------------------------------------------------------


def load_for_sampling(args):
    """(eps_model, config, device, precision, rank, world size) for the checkpoint named by
    --ckpt, the network run on the path --precision names (`ddim.network.precision`)."""
    from ddim.checkpoint import (
        bundled_checkpoint,
        config_for_foreign,
        load_checkpoint,
        model_from_checkpoint,
    )
    from ddim.device import distributed_context, parse_device
    from ddim.network.precision import eps_model_for, named_precision

    rank, world_size, device = distributed_context(parse_device(args.device))
    args.ckpt = args.ckpt or str(bundled_checkpoint())
    checkpoint = load_checkpoint(args.ckpt, config=args.config)
    net = model_from_checkpoint(checkpoint, use_ema=not args.raw, device=device)
    config = config_for_foreign(checkpoint)
    name = "fp32" if args.fp32 else args.precision
    precision = named_precision(name, device, compile=args.compile)
    eps_model = eps_model_for(net, precision)
    return eps_model, config, device, precision, rank, world_size


def sampler_spec(args, config, steps=None):
    """The SamplerSpec from the flags, defaults from the config's sampling section."""
    from ddim.generate import SamplerSpec

    s = config.sampling
    clip = {"auto": None, "on": True, "off": False}[args.clip_x0]
    if args.sampler == "ddpm" and args.eta is not None:
        raise DdimError("--eta applies to --sampler ddim only; DDPM's noise is set by --variance")
    if args.sampler == "ddim" and args.variance is not None:
        raise DdimError("--variance applies to --sampler ddpm only; DDIM's noise is set by --eta")
    eta = check_eta(s.eta if args.eta is None else args.eta, "--eta")
    return SamplerSpec(
        steps=next(v for v in (steps, args.steps, s.steps) if v is not None),
        skip=args.skip or s.skip,
        eta=eta if args.sampler == "ddim" else 0.0,
        kind=args.sampler,
        variance=args.variance or "small",
        clip_x0=clip,
    )


def spec_record(spec) -> dict:
    """The sampler's settings as recorded: only those the chosen sampler uses."""
    unused = "variance" if spec.kind == "ddim" else "eta"
    return {key: value for key, value in spec.__dict__.items() if key != unused}


def dataset_images(args, config):
    """(uint8 images, their indices) from --images/--subdir, --n of them evenly spread, at the
    model's size."""
    from ddim.data import open_dataset, spread_indices, take_images

    n = None if args.n is None else check_count(args.n, "--n")
    if args.batch is not None:
        check_count(args.batch, "--batch")
    dataset = open_dataset(args.images, subdir=args.subdir,
                           resolution=config.data.image_size, progress=False)
    indices = spread_indices(len(dataset), n)
    return take_images(dataset, indices), indices, dataset


def load_ode_run(args):
    """(eps_model, config, device, precision, betas, steps, skip, seqs) for the commands that
    decode one input at several S (`reconstruct`, `trajectory`); every S is validated first."""
    from ddim.diffusion.schedule import timesteps

    check_count(args.show, "--show")
    eps_model, config, device, precision, _, _ = load_for_sampling(args)
    betas = config.diffusion.betas()
    steps = [config.sampling.steps] if args.steps is None else args.steps
    skip = args.skip or config.sampling.skip
    seqs = [timesteps(len(betas), S, skip) for S in steps]
    return eps_model, config, device, precision, betas, steps, skip, seqs


def model_settings(args, config, precision) -> dict:
    """What decides a model's outputs, for output records: weights (by hash), EMA or raw, the
    config, the arithmetic. Not the path (a moved file is the same model) nor the device."""
    return {
        "checkpoint_sha256": checkpoint_sha256(args.ckpt),
        "weights": "raw" if args.raw else "ema",
        "precision": describe(precision),
        "config": config.to_dict(),
    }


def checkpoint_sha256(path) -> str:
    """SHA-256 of a checkpoint file (or diffusers folder), computed once per process."""
    from ddim.files import cached_file_sha256, path_sha256

    path = Path(path).resolve()
    return path_sha256(path) if path.is_dir() else cached_file_sha256(str(path))


def model_record(args, config, device, precision) -> dict:
    """What identifies the model run: checkpoint + hash, EMA or raw, device, arithmetic."""
    return {
        "checkpoint": str(args.ckpt),
        "checkpoint_sha256": checkpoint_sha256(args.ckpt),
        "weights": "raw" if args.raw else "ema",
        "device": str(device),
        "precision": describe(precision),
        "beta_schedule": config.diffusion.beta_schedule,
        "num_diffusion_timesteps": config.diffusion.num_diffusion_timesteps,
    }
