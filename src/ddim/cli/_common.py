"""The command line the commands share: the flag groups (model, sampler, images, the image count,
output), the checks of numbers given as flags, what the model and sampler flags become in the
sampling stage (`model_from_flags`, `settings_from_flags`), and how a resumable run counts its
batches (`count_batch`). Commands import this module, never each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddim.data import (
    SELECTION,  # noqa: F401  (recorded by the commands that take --n images)
    is_dataset_name,
)
from ddim.diffusion.schedule import SKIP_KINDS
from ddim.errors import DdimError
from ddim.network.precision import PRECISIONS

SPREAD_HELP = "indices ⌊k·size/N⌋, so class-sorted folders keep every class"
CLIP_X0 = {"auto": None, "on": True, "off": False}

# --- flags -------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--ckpt, --config, --raw, --device, --precision, --fp32, --compile: shared by the commands
    that load a model."""
    parser.add_argument(
        "--ckpt",
        help="checkpoint: a file (ours, official ckpt.pth, .ckpt), a diffusers folder, a run "
             "directory (its newest checkpoint), a name (bundled, ema_cifar10, cifar10, "
             "[ema_]lsun_{bedroom,cat,church}: fetched once, `ddim cache list`) or a Hugging "
             "Face hub id (default: the bundled model)",
    )
    parser.add_argument("--config", help="config name/YAML for checkpoints that carry none")
    parser.add_argument("--raw", action="store_true",
                        help="raw weights instead of EMA (the default unless the config's "
                             "model.ema is false)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the network's arithmetic: fp32; mixed = bf16 for t < 500, fp32 "
                             "above; bf16 (autocast); pure-bf16 = the network itself cast to "
                             "bf16, norms included (default auto: bf16 on CUDA and on CPUs with "
                             "native bf16, else fp32; see docs/performance.md)")
    parser.add_argument("--fp32", "--no-amp", dest="fp32", action="store_true",
                        help="the same as --precision fp32")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (pays off for thousands of images)")


def add_skip_argument(parser: argparse.ArgumentParser, choices=SKIP_KINDS, **kwargs) -> None:
    """--skip: the timestep sub-sequence kind."""
    kwargs.setdefault("help", "timestep sub-sequence (default: the config's)")
    parser.add_argument("--skip", choices=list(choices), **kwargs)


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """--sampler, --steps, --skip, --eta, --variance, --clip-x0, --batch."""
    from ddim.sampling.settings import SAMPLERS

    parser.add_argument("--sampler", choices=list(SAMPLERS), default="ddim")
    parser.add_argument("--steps", type=int, help="S, network calls per image (default: the "
                        "config's)")  # fmt: skip
    add_skip_argument(parser)
    parser.add_argument("--eta", type=float,
                        help="η of eq. 16: 0 DDIM … 1 DDPM-like (default: the config's)")
    parser.add_argument("--variance", choices=["small", "large"],
                        help="DDPM variance: small = β̃, large = β (the paper's σ̂); default: the "
                             "config's model.var_type (fixedlarge: large, fixedsmall: small)")
    parser.add_argument("--clip-x0", choices=list(CLIP_X0), default="auto",
                        help="clip predicted x0 to [-1, 1] (auto: off for DDIM, on for DDPM)")
    parser.add_argument("--batch", type=int, help="images per batch (default: the config's)")


def add_count_argument(parser: argparse.ArgumentParser, default: int | None, help: str) -> None:
    """--n, or its other spelling --count (args.n): how many images a command makes or reads.
    Under torchrun write --count: torchrun's own parser matches `--n` as a prefix of its
    --nnodes/--nproc-per-node and stops there, before ddim sees it."""
    parser.add_argument("--n", "--count", dest="n", type=int, default=default, metavar="N",
                        help=f"{help}; --count N is the same (torchrun takes --n for its own)")


def add_images_arguments(parser: argparse.ArgumentParser, n_default: int | None = None) -> None:
    """--images, --subdir, --n/--count, --batch: which dataset images to read, and how many at
    once."""
    parser.add_argument("--images", required=True,
                        help="dataset: image folder, zip, cifar-10-batches-py folder, NHWC .npz, "
                             "or a name (cifar10, with --subdir train or test)")
    parser.add_argument("--subdir", help="part of the dataset (CIFAR-10: train/test; zip folder)")
    add_count_argument(parser, n_default, f"use N images evenly spread through the dataset "
                                          f"(default: {n_default or 'all'}; {SPREAD_HELP})")
    parser.add_argument("--batch", type=int, help="images per batch (default: the config's)")


def add_ode_arguments(parser: argparse.ArgumentParser, steps_nargs=None) -> None:
    """--steps and --skip of the deterministic sampler (η = 0)."""
    parser.add_argument("--steps", type=int, nargs=steps_nargs, help="S (default: the config's)")
    add_skip_argument(parser)


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """--overwrite: replace an output made with other settings (see ddim.files.outputs)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output made with other settings")


def picture_output(path: str, command: str):
    """(Output of `command`, record path) for a picture written with a JSON record beside it
    (NAME.json): PNG or JPEG as its suffix says; another suffix is refused before any work."""
    from ddim.files import file_output
    from ddim.images import picture_format

    path = Path(path)
    if path.is_file() or not path.exists():  # a folder or a device: the claim says what it is
        picture_format(path)  # a name of another format is refused, naming those written
    record = path.with_suffix(".json")
    return file_output(path, beside=(record.name,), command=command), record


def data_overrides(data: str | None, subdir: str | None) -> list[str]:
    """`data.path` and `data.subdir` overrides from --data and --subdir: a path made absolute,
    a dataset name (`cifar10`, where no file of that name is here) kept as the name."""
    named = data is not None and not Path(data).exists() and is_dataset_name(data)
    overrides = [f"data.path={data if named else Path(data).resolve()}"] if data else []
    return overrides + ([f"data.subdir={subdir}"] if subdir else [])


# --- what the flags become ---------------------------------------------------------------------


def device_from_flag(name: str | None):
    """The torch device --device names, or cuda when available, else cpu."""
    import torch

    from ddim.device import parse_device

    return parse_device(name) or torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_from_flags(args, device=None):
    """The SamplingModel that --ckpt, --config, --raw, --precision, --fp32 and --compile name, on
    `device` (default: --device, or the torchrun rank's)."""
    from ddim.device import distributed_context, parse_device
    from ddim.sampling.model import load_sampling_model

    if device is None:
        device = distributed_context(parse_device(args.device))[2]
    return load_sampling_model(
        args.ckpt, config=args.config, raw=args.raw, device=device,
        precision="fp32" if args.fp32 else args.precision, compile=args.compile,
    )  # fmt: skip


def settings_from_flags(args, model, **fixed):
    """The SamplingSettings of the sampler flags present in `args` (--sampler, --steps, --skip,
    --eta, --variance, --clip-x0, --batch), the model's config's defaults for the rest; `fixed`
    gives what a command does not take as flags (the ODE commands: eta=0.0). A batch whose
    activations cannot fit the model's device is refused here, before any image is made."""
    from ddim.sampling.settings import sampling_settings

    names = ("sampler", "steps", "skip", "eta", "variance", "batch")
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if hasattr(args, "clip_x0"):
        given["clip_x0"] = CLIP_X0[args.clip_x0]
    settings = sampling_settings(model.config, **{**given, **fixed})
    check_batch_fits(model, settings.batch)
    return settings


def check_batch_fits(model, batch: int) -> None:
    """Refuse a batch whose activations cannot fit the model's device, in the arithmetic it runs
    (`check_activations_fit`: one image that cannot fit names the image size, a batch names how
    many fit)."""
    from ddim.checkpoint.weights import check_activations_fit

    p, config = model.precision, model.config
    check_activations_fit(
        config.model, config.data.image_size, batch=batch, device=model.device,
        bytes_per_value=2 if p.bf16 and p.bf16_below is None else 4,
        attention_scores=not p.channels_last, source=repr(str(model.checkpoint)),
    )  # fmt: skip


def count_batch(bar, made: int, found: int) -> None:
    """Count a batch of a resumable run on its bar: the items made in this run, and those an
    earlier run made (in the count, not in the rate or the ETA: `ProgressBar.skip`)."""
    if found:
        bar.skip(found)
    if made:
        bar.update(made)


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
