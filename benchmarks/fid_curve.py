"""FID of training checkpoints against reference statistics: the curve of FID against images
seen and CPU hours, so the trend says what more training would buy.

Each checkpoint's EMA network samples the same N seeds with the same sampler (DDIM, η = 0, S = 50,
`quad` by default: the run's own sampling settings), the images are scored in memory as they come,
and one row per checkpoint is appended to OUT/curve.jsonl, naming the file by its name and SHA-256,
never by its folder (a rerun skips the files, by SHA-256, already scored at these settings), then
OUT/curve.md and OUT/curve.png are rewritten. The images seen and CPU hours are the weights'
lineage as their file records it (a warm start's earlier runs included), so the runs of one
lineage, scored at different times and on different machines, add up to one curve in one OUT;
each run is a series, named by `--label` (default: its run directory). A lineage with GPU
training stays off the CPU-hours panel (`--gpu`). Usage:

    python benchmarks/fid_curve.py RUN/checkpoints/ckpt-*.safetensors \\
        --ref refs/cifar10-test.npz --n 500 -o lab/notebook/fid-curve
"""

import argparse
import json
from pathlib import Path

import torch

from ddim.checkpoint import (
    bundled_checkpoint,
    checkpoint_sha256,
    load_checkpoint,
    model_from_checkpoint,
)
from ddim.evaluation import compute_scores, load_stats
from ddim.experiments.report import Panel, save_plot
from ddim.files import write_text
from ddim.network.precision import describe, eps_model_for, named_precision
from ddim.sampling import build_sampler, iterate_images


def run_label(path: Path) -> str:
    """A checkpoint's series name: its run directory (…/RUN/checkpoints/ckpt-*), else its stem."""
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem


def cpu_hours(recorded: float | None, before: float) -> float | None:
    """The lineage's CPU hours: what the file records plus what it could not (`--hours-before`)."""
    return None if recorded is None and not before else (recorded or 0.0) + before


def score(path: Path, ref, args, device: torch.device, precision) -> dict:
    """One checkpoint's row: its training progress and the FID of N samples."""
    checkpoint = load_checkpoint(path)
    config = checkpoint.config
    net = model_from_checkpoint(checkpoint, use_ema=True, device=device)
    eps_model = eps_model_for(net, precision)
    sampler = build_sampler(config.diffusion.betas(), args.steps,
                            args.skip or config.sampling.skip, eta=0.0)
    shape = (config.model.in_channels, config.data.image_size, config.data.image_size)
    seeds = range(args.seed, args.seed + args.n)
    images = iterate_images(eps_model, sampler, seeds, shape, batch=args.batch, device=device)
    fid = compute_scores(images, ref, device=device, batch_size=args.batch, total=args.n).fid
    return {
        "ckpt": path.name, "label": args.label or run_label(path), "step": checkpoint.step,
        "images_seen": checkpoint.images_seen,
        "cpu_hours": None if args.gpu else cpu_hours(checkpoint.cpu_hours, args.hours_before),
        "fid": fid,
    }


def write_outputs(rows: list[dict], out: Path, settings: dict) -> None:
    """curve.md (a table) and curve.png (FID against images seen and CPU hours, a series a run)."""
    rows = sorted(rows, key=lambda r: r["images_seen"])
    lines = [
        f"FID of {settings['n']} samples (DDIM, η = 0, S = {settings['steps']}, "
        f"{settings['skip'] or 'the config'}'s skip, seeds from {settings['seed']}, EMA weights) "
        "against the reference statistics of each row.\n",
        "| run | step | images seen | CPU hours | FID | reference (n) | precision |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cpu = "—" if r["cpu_hours"] is None else f"{r['cpu_hours']:.2f}"
        lines.append(f"| {r['label']} | {r['step']:,} | {r['images_seen']:,} | {cpu} | "
                     f"{r['fid']:.2f} | {r['ref']} ({r['ref_n']:,}) | {r['precision']} |")
    write_text(out / "curve.md", "\n".join(lines) + "\n")
    title = f"FID ({settings['n']} samples)"
    by_images, by_hours = {}, {}
    for r in rows:
        by_images.setdefault(r["label"], []).append((round(r["images_seen"] / 1e6, 2), r["fid"]))
        if r["cpu_hours"] is not None:
            by_hours.setdefault(r["label"], []).append((round(r["cpu_hours"], 2), r["fid"]))
    panels = [Panel(by_images, title=title, xlabel="million images seen (log scale)")]
    if by_hours:
        panels.append(Panel(by_hours, title=title, xlabel="CPU hours", log_x=False))
    save_plot(panels, out / "curve.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", nargs="+", help="checkpoints (of one run or several)")
    parser.add_argument("--ref", required=True, help="reference stats from `ddim fid ref`")
    parser.add_argument("--n", type=int, default=500, help="samples per checkpoint")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps S")
    parser.add_argument("--skip", help="timestep sub-sequence (default: the config's)")
    parser.add_argument("--seed", type=int, default=0, help="image k uses seed + k")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--label", help="series name of these checkpoints (default: run folder)")
    parser.add_argument("--gpu", action="store_true",
                        help="the lineage includes GPU training: no CPU hours for these rows")
    parser.add_argument("--hours-before", type=float, default=0.0,
                        help="CPU hours of the lineage that the files do not record (a warm "
                             "start from weights converted before files recorded them)")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    args = parser.parse_args()

    device = torch.device(args.device)
    ref = load_stats(args.ref)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    precision = named_precision(args.precision, device)
    # what makes FIDs comparable; the reference and precision are recorded in each row
    settings = {"n": args.n, "steps": args.steps, "skip": args.skip, "seed": args.seed}
    log = out / "curve.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    rows = [r for r in rows if r["settings"] == settings]
    done = {r.get("sha256") for r in rows}  # a file scored before, wherever it is now
    for name in args.ckpt:
        path = bundled_checkpoint() if name == "bundled" else Path(name).resolve()
        sha256 = checkpoint_sha256(path)
        if sha256 in done:
            continue
        row = {**score(path, ref, args, device, precision), "sha256": sha256, "settings": settings,
               "ref": Path(args.ref).name, "ref_n": ref.n, "precision": describe(precision)}
        print(f"{row['label']} step {row['step']:,} ({row['images_seen']:,} images): "
              f"FID {row['fid']:.2f} ({args.n} samples)", flush=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        write_outputs(rows, out, settings)
    write_outputs(rows, out, settings)
    print((out / "curve.md").read_text())


if __name__ == "__main__":
    main()
