"""`ddim convert`: official ckpt.pth or .ckpt, ddim .safetensors and diffusers folders, any way."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddim.checkpoint import (
    Checkpoint,
    checkpoint_sha256,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from ddim.checkpoint.diffusers import export_diffusers, verify_diffusers
from ddim.checkpoint.load import checkpoint_name
from ddim.cli._common import add_overwrite_argument
from ddim.config import CONFIG_NAMES
from ddim.errors import DdimError

DIFFUSERS_NAMES = ("model_index.json", "unet", "scheduler")

HELP = "Convert U-Net weights: official ckpt.pth/.ckpt, ddim .safetensors, diffusers folders."
EXAMPLE = "ddim convert ckpt.pth cifar10.safetensors --config cifar10"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Source, destination, and how to fill in what a foreign file does not record."""
    parser.add_argument("source", type=Path, help="checkpoint file or diffusers folder to read")
    parser.add_argument(
        "destination",
        type=Path,
        help="a .safetensors file (ddim format) or a folder (diffusers DDIMPipeline layout)",
    )
    parser.add_argument(
        "--to",
        choices=("ddim", "diffusers"),
        default=None,
        help="output kind (default: ddim for a .safetensors destination, else diffusers)",
    )
    parser.add_argument(
        "--config",
        default=None,
        help=f"config name ({', '.join(CONFIG_NAMES)}) or yml file, for files that record none "
        "(a file that records one keeps it; a --config that differs is refused)",
    )
    parser.add_argument(
        "--raw", action="store_true", help="export the raw weights instead of the EMA weights"
    )
    parser.add_argument(
        "--half",
        action="store_true",
        help="ddim export: keep only the chosen weights (EMA unless --raw), stored as float16",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="diffusers export: load it with diffusers and compare outputs (needs diffusers)",
    )
    add_overwrite_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Read the source, write the destination, print what was written."""
    from ddim.files import claim_output

    to = args.to or ("ddim" if args.destination.suffix == ".safetensors" else "diffusers")
    if args.destination.resolve() == args.source.resolve():
        raise DdimError(f"the destination {str(args.destination)!r} is the source; write elsewhere")
    checkpoint = load_checkpoint(args.source, config=args.config)  # --config must agree
    if checkpoint.config is None:
        raise DdimError(
            f"{args.source} records no config (schedule, image size): give --config, "
            f"e.g. --config {CONFIG_NAMES[0]}"
        )
    checkpoint.weights_label(use_ema=not args.raw)  # --raw of a file without raw weights
    settings = {"source_sha256": checkpoint_sha256(args.source), "to": to, "raw": args.raw,
                "half": args.half, "config": checkpoint.config.to_dict()}
    with claim_output(_output(args.destination, to), settings, overwrite=args.overwrite):
        if to == "ddim":
            _save_ddim(args, checkpoint)
        else:
            export_diffusers(checkpoint, args.destination, use_ema=not args.raw)
            if args.verify:
                _verify(checkpoint, args.destination, use_ema=not args.raw)
    print(f"wrote {args.destination} ({to}, from a {checkpoint.kind} checkpoint)")
    return 0


def _output(destination: Path, to: str):
    """The destination as an output: our file, or a diffusers folder."""
    from ddim.files import file_output, folder_output

    if to == "ddim":
        return file_output(destination, command="convert")
    return folder_output(destination, DIFFUSERS_NAMES, command="convert", reused=())


def _save_ddim(args: argparse.Namespace, checkpoint: Checkpoint) -> None:
    """Write our format: both weights, or only the chosen ones (in float16 with --half)."""
    model, ema = checkpoint.model_state, None if args.raw else checkpoint.ema_state
    if args.half:
        model = {k: v.half() for k, v in checkpoint.weights(use_ema=not args.raw).items()}
        ema = None
    save_checkpoint(
        args.destination,
        model_state=model,
        ema_state=ema,
        config=checkpoint.config,
        step=checkpoint.step or 0,
        extra_meta={
            **_lineage(checkpoint),
            "converted_from": checkpoint_name(args.source),
            "source_kind": checkpoint.kind,
            "weights": checkpoint.weights_label(use_ema=not args.raw),
            "float16": args.half,
        },
    )


def _lineage(checkpoint: Checkpoint) -> dict:
    """What the source records of its weights' history (images seen, CPU hours, the warm start
    its run began from), kept so that a converted file, such as the bundled one, goes on
    counting for the runs that start from it."""
    extra = checkpoint.meta.get("extra") or {}
    return {key: extra[key] for key in ("images_seen", "cpu_hours", "init") if key in extra}


def _verify(checkpoint: Checkpoint, folder: Path, *, use_ema: bool) -> None:
    """Compare diffusers' output on the export with ours; a mismatch is an error."""
    error = verify_diffusers(folder, model_from_checkpoint(checkpoint, use_ema=use_ema))
    if error > 1e-4:
        raise DdimError(f"diffusers' output differs from ours by {error:.3g} (max abs)")
    print(f"verified with diffusers: max |difference| = {error:.3g}")
