"""FID of a training run's checkpoints against reference statistics: the curve of FID against
images seen and CPU hours, so the trend says what more training would buy.

Each checkpoint's EMA network samples the same N seeds with the same sampler (DDIM, η = 0, S = 50,
`quad` by default: the run's own sampling settings), the images are scored in memory as they come,
and one row per checkpoint is appended to OUT/curve.jsonl (a rerun skips the checkpoints already
scored at these settings), then OUT/curve.md and OUT/curve.png are rewritten. Usage:

    python benchmarks/fid_curve.py RUN/checkpoints/ckpt-*.safetensors \\
        --ref refs/cifar10-test.npz --n 500 -o runs/fid-curve
"""

import argparse
import json
from pathlib import Path

import torch

from ddim.checkpoint import load_checkpoint, model_from_checkpoint
from ddim.experiments.report import Panel, save_plot
from ddim.fid import compute_fid, load_stats
from ddim.files import write_text
from ddim.network.precision import describe, eps_model_for, named_precision
from ddim.sampling import build_sampler, iterate_images


def score(path: str, ref, args, device: torch.device, precision) -> dict:
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
    fid = compute_fid(images, ref, device=device, batch_size=args.batch, total=args.n)
    state = checkpoint.load_train_state() or {}
    cpu = state.get("cpu_seconds")
    return {
        "ckpt": str(path), "step": checkpoint.step,
        "images_seen": checkpoint.step * config.training.batch_size,
        "cpu_hours": None if cpu is None else cpu / 3600, "fid": fid,
    }


def write_outputs(rows: list[dict], out: Path, settings: dict) -> None:
    """curve.md (a table) and curve.png (FID against images seen and CPU hours)."""
    rows = sorted(rows, key=lambda r: r["step"])
    lines = [
        f"FID of {settings['n']} samples (DDIM, η = 0, S = {settings['steps']}, "
        f"{settings['skip'] or 'the config'}'s skip, EMA weights, precision "
        f"{settings['precision']}) against {settings['ref']} (n = {settings['ref_n']}).\n",
        "| step | images seen | CPU hours | FID |", "| --- | --- | --- | --- |",
    ]
    for r in rows:
        cpu = "—" if r["cpu_hours"] is None else f"{r['cpu_hours']:.2f}"
        lines.append(f"| {r['step']:,} | {r['images_seen']:,} | {cpu} | {r['fid']:.2f} |")
    write_text(out / "curve.md", "\n".join(lines) + "\n")
    panels = [Panel({"FID": [(r["images_seen"] / 1000, r["fid"]) for r in rows]},
                    title=f"FID ({settings['n']} samples)", xlabel="thousand images seen",
                    log_x=False)]
    timed = [r for r in rows if r["cpu_hours"] is not None]
    if timed:
        panels.append(Panel({"FID": [(round(r["cpu_hours"], 2), r["fid"]) for r in timed]},
                            title=f"FID ({settings['n']} samples)", xlabel="CPU hours",
                            log_x=False))
    save_plot(panels, out / "curve.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", nargs="+", help="checkpoints of one run")
    parser.add_argument("--ref", required=True, help="reference stats from `ddim fid ref`")
    parser.add_argument("--n", type=int, default=500, help="samples per checkpoint")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps S")
    parser.add_argument("--skip", help="timestep sub-sequence (default: the config's)")
    parser.add_argument("--seed", type=int, default=0, help="image k uses seed + k")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    args = parser.parse_args()

    device = torch.device(args.device)
    ref = load_stats(args.ref)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    precision = named_precision(args.precision, device)
    settings = {"n": args.n, "steps": args.steps, "skip": args.skip, "seed": args.seed,
                "precision": describe(precision),
                "ref": args.ref, "ref_n": ref.n}
    log = out / "curve.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    rows = [r for r in rows if r["settings"] == settings]
    done = {r["ckpt"] for r in rows}
    for path in args.ckpt:
        if path in done:
            continue
        row = {**score(path, ref, args, device, precision), "settings": settings}
        print(f"step {row['step']:,}: FID {row['fid']:.2f} ({args.n} samples)", flush=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        write_outputs(rows, out, settings)
    write_outputs(rows, out, settings)
    print((out / "curve.md").read_text())


if __name__ == "__main__":
    main()
