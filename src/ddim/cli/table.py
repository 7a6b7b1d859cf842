"""`ddim table`: the paper's Table 1, FID and KID of DDIM(η), DDPM σ̂ and DPM-Solver++(2M) for
each S, resumable."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ddim.cli._common import (
    add_count_argument,
    add_model_arguments,
    add_overwrite_argument,
    add_skip_argument,
    check_batch_fits,
    check_seeds,
    model_from_flags,
)
from ddim.errors import DdimError
from ddim.progress import progress_bar

HELP = ("Table 1: FID and KID for each (η, S), the σ̂ and 2M rows, generated in memory; "
        "table.md/json + plot.")
EXAMPLE = (
    "ddim table --ckpt ckpt.safetensors --ref fid-refs/cifar10-train.npz --n 50000 "
    "--steps 10 20 50 100 1000 --etas 0 0.2 0.5 1 --sigma-hat -o table1"
)

# What `ddim table` owns in its output folder: a rerun continues table.json's cells and makes
# the markdown and the plot again.
OWNED = ("table.json", "table.md", "fid_vs_steps.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim table`."""
    add_model_arguments(parser)
    parser.add_argument("--ref", required=True,
                        help="reference stats: a file from `ddim fid ref` (.npz), or a name "
                             "(cifar10-train, cifar10-test: made once into the cache)")
    add_count_argument(parser, 50_000, "images per cell (50000)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 1000],
                        help="S values, the columns (10 20 50 100 1000)")
    parser.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.2, 0.5, 1.0],
                        help="η values, the DDIM rows (0 0.2 0.5 1)")
    parser.add_argument("--sigma-hat", action="store_true",
                        help="add the σ̂ row: DDPM ancestral sampling with variance β")
    parser.add_argument("--dpmpp-2m", action="store_true",
                        help="add the DPM-Solver++(2M) row: the second-order multistep solver "
                             "on the same timesteps, one network call per timestep as DDIM")
    add_skip_argument(parser, help="sub-sequence for S < T (default: quad for CIFAR10, else "
                                   "uniform; logsnr is the 2M row's own spacing)")
    parser.add_argument("--seed", type=int, default=0, help="image k of every cell uses seed + k")
    parser.add_argument("--batch", type=int, help="images per batch (default: the config's)")
    parser.add_argument("-o", "--out", default="table1",
                        help="folder: table.json (resumable), table.md, fid_vs_steps.png")
    add_overwrite_argument(parser)


def default_skip(config) -> str:
    """The paper's choice: quad for CIFAR-10, uniform for the other datasets."""
    return "quad" if config.data.dataset.upper() == "CIFAR10" else "uniform"


def table_settings(args, model, ref_stats, skip: str) -> dict:
    """Every run-wide choice that changes the numbers; a stored cell is reused only if equal.
    Inputs by their content (the weights' and the reference's SHA-256), not their paths: a
    relative path, a moved or a copied file resumes the same table."""
    from ddim.files import cached_file_sha256

    return {
        **model.settings(), "device": model.device.type, "n": args.n,
        "seeds": [args.seed, args.seed + args.n - 1],
        "skip": skip, "skip_at_S_equal_T": "uniform (all T steps)",
        "clip_x0": "off for DDIM and 2M, on for DDPM sigma_hat (the official code)",
        "reference": {"sha256": cached_file_sha256(str(Path(args.ref_file).resolve())),
                      "n": ref_stats.n, "source": ref_stats.source,
                      "network_sha256": ref_stats.network_sha256,
                      "convention": ref_stats.convention},
    }  # fmt: skip


def _check(args) -> None:
    """Reject bad counts before loading anything."""
    from ddim.evaluation.inception import FEATURE_DIM
    from ddim.files import check_fits_in_memory

    if args.n < 2:
        raise DdimError(f"--n must be >= 2 for a covariance, got {args.n}")
    check_seeds(args.seed, args.n)
    check_fits_in_memory(args.n * FEATURE_DIM * 8, f"--n {args.n} (Inception features)")


def run(args) -> int:
    """Score each missing cell, saving table.json, table.md and the plot after every one.

    The cells are decided once, here: a sampler per (row, S), over τ computed once per S, then
    scored in turn (FID, and KID where the reference keeps features).
    """
    from ddim.evaluation.references import reference_file
    from ddim.evaluation.scoring import few_images_caution
    from ddim.experiments.paper import (
        resume_record,
        run_table,
        table_cells,
        table_markdown,
        table_rows,
    )
    from ddim.files import claim_output, folder_output

    _check(args)
    model = model_from_flags(args)
    args.ref_file = reference_file(args.ref, device=model.device, batch_size=args.batch or 64)
    config = model.config
    skip = args.skip or default_skip(config)
    rows = table_rows(args.etas or [], args.sigma_hat, args.dpmpp_2m)
    cells = table_cells(config.diffusion.betas(), args.steps, rows, skip)
    ref_stats, score = _scorer(args, model)
    out = Path(args.out)
    recorded = table_settings(args, model, ref_stats, skip)
    output = folder_output(out, OWNED, command="table", reused=("table.json",))
    with claim_output(output, recorded, overwrite=args.overwrite):
        record = resume_record(out / "table.json", recorded)
        record["inputs"] = {"checkpoint": model.checkpoint, "reference": str(args.ref)}
        record["kid_unavailable"] = _kid_unavailable(ref_stats, args.ref_file)
        record["caution"] = few_images_caution(args.n)
        with progress_bar(total=len(cells), unit="cell", desc="table") as bar:
            record = run_table(cells, score, record, lambda r: write_outputs(r, out),
                               progress=lambda key, found: _count(bar, key, found))
        write_outputs(record, out)
    print(table_markdown(record))
    if record["caution"]:
        print(f"caution: each cell scores {args.n} images: {record['caution']}")
    print(f"wrote table.json, table.md, fid_vs_steps.png to {out}", file=sys.stderr)
    return 0


def _scorer(args, model):
    """(the reference stats, checked against the model's images; a cell's scorer: its images
    generated in memory, in batches of --batch, scored by FID and KID against them)."""
    from ddim.evaluation.scoring import compute_scores
    from ddim.evaluation.stats_file import check_resolution, load_stats
    from ddim.sampling.runners import iterate_images
    from ddim.sampling.settings import batch_size, image_shape

    config = model.config
    batch, shape = batch_size(config, args.batch), image_shape(config)
    check_batch_fits(model, batch)
    ref_stats = load_stats(args.ref_file)
    check_resolution(ref_stats, config.data.image_size, str(args.ref), "the model's images")
    seeds = list(range(args.seed, args.seed + args.n))

    def score(sampler):
        images = iterate_images(model.eps_model, sampler, seeds, shape, batch=batch,
                                device=model.device)  # fmt: skip
        return compute_scores(images, ref_stats, device=model.device, batch_size=batch,
                              total=args.n)  # fmt: skip

    return ref_stats, score


def _kid_unavailable(ref_stats, ref: str) -> str | None:
    """Why the table has no KID (a reference without features, and how to rebuild it), said
    once as a warning; None when it has."""
    from ddim.evaluation.references import missing_features

    if ref_stats.features is not None:
        return None
    why = missing_features(ref_stats, ref)
    warnings.warn(f"KID unavailable, FID only: {why}", stacklevel=2)
    return why


def _count(bar, key: str, found: bool) -> None:
    """Count a cell on the bar: one scored in this run, or one an earlier run scored (in the
    count, not in the rate or the ETA)."""
    bar.set_postfix_str(key)
    if found:
        bar.skip(1)
    else:
        bar.update(1)


def write_outputs(record: dict, out: Path) -> None:
    """table.json (atomically), table.md and fid_vs_steps.png (FID, and KID where scored) from
    the record so far."""
    from ddim.experiments.paper import cell_kid, table_markdown, table_series
    from ddim.experiments.report import Panel, save_plot
    from ddim.files import write_text

    write_text(out / "table.json", json.dumps(record, indent=2))
    s = record["settings"]
    header = (f"# FID and KID table (Table 1 grid)\n\nN = {s['n']} images per cell, skip = "
              f"{s['skip']} (S = T: all steps), {s['provenance']['weights']} weights, reference "
              f"{record['inputs']['reference']} (n = {s['reference']['n']}), precision "
              f"{s['precision']}, device = {s['device']}.\n\n")
    write_text(out / "table.md", header + table_markdown(record))
    panels = [Panel(table_series(record), title="FID")]
    kid = table_series(record, cell_kid)
    if kid:
        panels.append(Panel(kid, title="KID x 1000"))
    save_plot(panels, out / "fid_vs_steps.png")
