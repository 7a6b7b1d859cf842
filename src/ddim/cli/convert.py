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
        help="a .safetensors file (ddim format) or a folder named without a suffix (diffusers "
        "DDIMPipeline layout)",
    )
    parser.add_argument(
        "--to",
        choices=("ddim", "diffusers"),
        default=None,
        help="output kind (default: ddim for a .safetensors destination, else diffusers); a "
        "destination of another kind's name is refused",
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
        help="keep only the chosen weights (EMA unless --raw), stored as float16 (both kinds)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="diffusers export: load it with diffusers and compare outputs (needs diffusers)",
    )
    add_overwrite_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Read the source, write the destination, print what was written.

    What is written is decided once, here (`plan`: the kind, which weights, their dtype), and
    the output's record is that plan: the writers read nothing else."""
    from ddim.files import claim_output

    to = destination_kind(args.destination, args.to)
    if args.verify and to != "diffusers":
        raise DdimError("--verify checks a diffusers export with diffusers; our format is "
                        "checked on every load: drop --verify, or pass --to diffusers")
    if args.destination.resolve() == args.source.resolve():
        raise DdimError(f"the destination {str(args.destination)!r} is the source; write elsewhere")
    checkpoint = load_checkpoint(args.source, config=args.config)  # --config must agree
    if checkpoint.config is None:
        raise DdimError(
            f"{args.source} records no config (schedule, image size): give --config, "
            f"e.g. --config {CONFIG_NAMES[0]}"
        )
    checkpoint.weights_label(use_ema=not args.raw)  # --raw of a file without raw weights
    plan = {"to": to, "raw": args.raw, "half": args.half}
    settings = {"source_sha256": checkpoint_sha256(args.source), **plan,
                "config": checkpoint.config.to_dict()}
    with claim_output(_output(args.destination, to), settings, overwrite=args.overwrite):
        if to == "ddim":
            _save_ddim(checkpoint, args.destination, plan, source=args.source)
        else:
            export_diffusers(checkpoint, args.destination, use_ema=not plan["raw"],
                             half=plan["half"])  # fmt: skip
            if args.verify:
                _verify(checkpoint, args.destination, plan)
    print(f"wrote {args.destination} ({to}{', float16' if plan['half'] else ''}, from a "
          f"{checkpoint.kind} checkpoint)")
    return 0


def destination_kind(destination: Path, to: str | None) -> str:
    """What `--to` writes to `destination` (default: ours for a .safetensors name, else
    diffusers); a name whose suffix is not that kind's is refused, naming the one to give."""
    suffix = destination.suffix.lower()
    kind = to or ("ddim" if suffix == ".safetensors" else "diffusers")
    if kind == "ddim" and suffix != ".safetensors":
        raise DdimError(
            f"the destination {str(destination)!r}: our format is one file, NAME.safetensors; "
            f"give a .safetensors name (or --to diffusers and a folder name without a suffix)"
        )
    if kind == "diffusers" and suffix:
        raise DdimError(
            f"the destination {str(destination)!r}: a diffusers export is a folder; give a name "
            f"without a suffix, e.g. {str(destination.with_suffix(''))!r} (or NAME.safetensors "
            f"for our format)"
        )
    return kind


def _output(destination: Path, to: str):
    """The destination as an output: our file, or a diffusers folder."""
    from ddim.files import file_output, folder_output

    if to == "ddim":
        return file_output(destination, command="convert")
    return folder_output(destination, DIFFUSERS_NAMES, command="convert", reused=())


def _save_ddim(checkpoint: Checkpoint, destination: Path, plan: dict, *, source: Path) -> None:
    """Write our format as `plan` says: both weights, or only the chosen ones in float16
    (`half`); the same bytes for the same source and plan (`save_checkpoint` orders its
    metadata)."""
    use_ema = not plan["raw"]
    model, ema = checkpoint.model_state, checkpoint.ema_state if use_ema else None
    if plan["half"]:
        model = {k: v.half() for k, v in checkpoint.weights(use_ema=use_ema).items()}
        ema = None
    extra = {**_lineage(checkpoint), "converted_from": checkpoint_name(source),
             "source_kind": checkpoint.kind, "weights": checkpoint.weights_label(use_ema=use_ema),
             "float16": plan["half"]}  # fmt: skip
    save_checkpoint(destination, model_state=model, ema_state=ema, config=checkpoint.config,
                    step=checkpoint.step or 0, extra_meta=extra)  # fmt: skip


def _lineage(checkpoint: Checkpoint) -> dict:
    """What the source records of its weights' history (images seen, CPU hours, the warm start
    its run began from), kept so that a converted file, such as the bundled one, goes on
    counting for the runs that start from it."""
    extra = checkpoint.meta.get("extra") or {}
    return {key: extra[key] for key in ("images_seen", "cpu_hours", "init") if key in extra}


def _verify(checkpoint: Checkpoint, folder: Path, plan: dict) -> None:
    """Compare diffusers' output on the export with ours on the same weights (rounded to
    float16 when the export holds them so); a mismatch is an error."""
    net = model_from_checkpoint(checkpoint, use_ema=not plan["raw"])
    if plan["half"]:
        net.load_state_dict({k: v.half().to(v.dtype) if v.is_floating_point() else v
                             for k, v in net.state_dict().items()})  # fmt: skip
    error = verify_diffusers(folder, net)
    if error > 1e-4:
        raise DdimError(f"diffusers' output differs from ours by {error:.3g} (max abs)")
    print(f"verified with diffusers: max |difference| = {error:.3g}")
