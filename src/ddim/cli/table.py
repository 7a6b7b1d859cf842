"""`ddim table`: the paper's Table 1, FID of DDIM(η) and DDPM σ̂ for each S, resumable."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ddim.cli._common import (
    add_model_arguments,
    add_overwrite_argument,
    add_skip_argument,
    check_seeds,
    model_from_flags,
)
from ddim.errors import DdimError
from ddim.progress import progress_bar

HELP = "Table 1: FID for each (η, S) and the σ̂ row, generated in memory; table.md/json + plot."
EXAMPLE = (
    "ddim table --ckpt ckpt.safetensors --ref fid-refs/cifar10-train.npz --n 50000 "
    "--steps 10 20 50 100 1000 --etas 0 0.2 0.5 1 --sigma-hat -o table1"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim table`."""
    add_model_arguments(parser)
    parser.add_argument("--ref", required=True, help="reference stats from `ddim fid ref` (.npz)")
    parser.add_argument("--n", type=int, default=50_000, help="images per cell (50000)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 1000],
                        help="S values, the columns (10 20 50 100 1000)")
    parser.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.2, 0.5, 1.0],
                        help="η values, the DDIM rows (0 0.2 0.5 1)")
    parser.add_argument("--sigma-hat", action="store_true",
                        help="add the σ̂ row: DDPM ancestral sampling with variance β")
    add_skip_argument(parser, choices=["uniform", "quad"],
                      help="sub-sequence for S < T (default: quad for CIFAR10, else uniform)")
    parser.add_argument("--seed", type=int, default=0, help="image k of every cell uses seed + k")
    parser.add_argument("--batch", type=int, help="images per batch (default: the config's)")
    parser.add_argument("-o", "--out", default="table1",
                        help="folder: table.json (resumable), table.md, fid_vs_steps.png")
    add_overwrite_argument(parser)


def default_skip(config) -> str:
    """The paper's choice: quad for CIFAR-10, uniform for the other datasets."""
    return "quad" if config.data.dataset.upper() == "CIFAR10" else "uniform"


def table_settings(args, model, ref_stats, skip: str) -> dict:
    """Every run-wide choice that changes the numbers; a stored cell is reused only if equal."""
    from ddim.files import file_sha256

    return {
        **model.record(), "device": model.device.type, "n": args.n,
        "seeds": [args.seed, args.seed + args.n - 1],
        "skip": skip, "skip_at_S_equal_T": "uniform (all T steps)",
        "clip_x0": "off for DDIM, on for DDPM sigma_hat (the official code)",
        "reference": {"path": str(args.ref), "sha256": file_sha256(args.ref), "n": ref_stats.n,
                      "source": ref_stats.source, "network_sha256": ref_stats.network_sha256,
                      "convention": ref_stats.convention},
        "config": model.config.to_dict(),
    }  # fmt: skip


def _check(args) -> None:
    """Reject bad counts before loading anything."""
    from ddim.fid import FEATURE_DIM
    from ddim.files import check_fits_in_memory

    if args.n < 2:
        raise DdimError(f"--n must be >= 2 for a covariance, got {args.n}")
    check_seeds(args.seed, args.n)
    check_fits_in_memory(args.n * FEATURE_DIM * 8, f"--n {args.n} (Inception features)")


def run(args) -> int:
    """Score each missing cell, saving table.json, table.md and the plot after every one.

    The cells are decided once, here: a sampler per (η, S) and per σ̂ cell, over τ computed once
    per S, then scored in turn.
    """
    from ddim.experiments.paper import resume_record, run_table, table_cells, table_markdown
    from ddim.fid import check_resolution, compute_fid, load_stats
    from ddim.files import claim_output, folder_output
    from ddim.sampling.runners import iterate_images
    from ddim.sampling.settings import SamplingSettings, batch_size, image_shape

    _check(args)
    model = model_from_flags(args)
    config = model.config
    skip = args.skip or default_skip(config)
    cells = table_cells(config.diffusion.betas(), args.steps, args.etas or [], args.sigma_hat,
                        skip)  # fmt: skip
    settings = SamplingSettings(tuple(cell.sampler for cell in cells),
                                batch_size(config, args.batch), image_shape(config))
    ref_stats = load_stats(args.ref)
    check_resolution(ref_stats, config.data.image_size, str(args.ref), "the model's images")
    seeds = list(range(args.seed, args.seed + args.n))

    def score(sampler) -> float:
        images = iterate_images(model.eps_model, sampler, seeds, settings.shape,
                                batch=settings.batch, device=model.device)  # fmt: skip
        return compute_fid(images, ref_stats, device=model.device, batch_size=settings.batch,
                           total=args.n)  # fmt: skip

    out = Path(args.out)
    recorded = table_settings(args, model, ref_stats, skip)
    output = folder_output(out, ("table.json", "table.md", "fid_vs_steps.png"), command="table",
                           reused=("table.json",))  # fmt: skip
    with claim_output(output, recorded, overwrite=args.overwrite):
        record = resume_record(out / "table.json", recorded)
        with progress_bar(total=len(cells), unit="cell", desc="table") as bar:
            record = run_table(cells, score, record, lambda r: write_outputs(r, out),
                               progress=lambda key: (bar.set_postfix_str(key), bar.update(1)))
        write_outputs(record, out)
    print(table_markdown(record))
    print(f"wrote table.json, table.md, fid_vs_steps.png to {out}", file=sys.stderr)
    return 0


def write_outputs(record: dict, out: Path) -> None:
    """table.json (atomically), table.md and fid_vs_steps.png from the record so far."""
    from ddim.experiments.paper import table_markdown, table_series
    from ddim.experiments.report import Panel, save_plot
    from ddim.files import write_text

    write_text(out / "table.json", json.dumps(record, indent=2))
    s = record["settings"]
    header = (f"# FID table (Table 1 grid)\n\nN = {s['n']} images per cell, skip = {s['skip']} "
              f"(S = T: all steps), {s['provenance']['weights']} weights, reference "
              f"{s['reference']['path']} "
              f"(n = {s['reference']['n']}), precision {s['precision']}, "
              f"device = {s['device']}.\n\n")
    write_text(out / "table.md", header + table_markdown(record))
    save_plot(Panel(table_series(record), title="FID"), out / "fid_vs_steps.png")
