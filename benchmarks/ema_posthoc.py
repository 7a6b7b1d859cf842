"""EMA weights of several half-lives, made after a run from its checkpoints' raw weights
(`ddim.training.posthoc`), each written as a checkpoint that `ddim sample` and
`benchmarks/fid_curve.py` read, so the half-life can be chosen by FID.

    python benchmarks/ema_posthoc.py RUN_DIR [RUN_DIR ...] --halflife-kimg 25 50 100 -o OUT

Several run directories (a run and its branches, or a warm start's earlier run) are read as one
line of snapshots ordered by the images their weights had seen. Each output
`OUT/ema-<H>kimg.safetensors` holds the average as its (only) weights, labelled EMA, the last
snapshot's config and step, and in its metadata the half-life, the snapshots it averages and the
lineage (images seen, CPU hours, the warm start the run began from).
"""

import argparse
from pathlib import Path

from ddim.checkpoint import load_checkpoint, save_checkpoint
from ddim.training.posthoc import average_states, snapshot_weights
from ddim.training.run_dir import run_checkpoints


def snapshots(run_dirs: list[str], first_images: int) -> list:
    """The runs' checkpoints from `first_images` images on, by images seen (one per count)."""
    found = {}
    for run in run_dirs:
        for path in run_checkpoints(Path(run)):
            checkpoint = load_checkpoint(path)
            if checkpoint.images_seen >= first_images:
                found[checkpoint.images_seen] = checkpoint
    return [found[images] for images in sorted(found)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--halflife-kimg", type=float, nargs="+", required=True)
    parser.add_argument("--from-images", type=int, default=0,
                        help="leave out snapshots of fewer images seen")
    parser.add_argument("-o", "--out", required=True)
    args = parser.parse_args()
    found = snapshots(args.runs, args.from_images)
    images = [c.images_seen for c in found]
    print(f"{len(found)} snapshots from {images[0]:,} to {images[-1]:,} images")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for halflife in args.halflife_kimg:
        weights = snapshot_weights(images, halflife * 1000)
        state = average_states([c.model_state for c in found], weights)
        last = found[-1]
        path = save_checkpoint(
            out / f"ema-{halflife:g}kimg.safetensors", model_state=state, config=last.config,
            step=last.step,
            extra_meta={"images_seen": images[-1], "posthoc_ema_halflife_kimg": halflife,
                        "snapshots": [str(c.path) for c in found], "weights": "ema",
                        "cpu_hours": last.cpu_hours,
                        "init": (last.meta.get("extra") or {}).get("init")},
        )  # fmt: skip
        top = max(weights)
        print(f"{path}: half-life {halflife:g} kimg, largest snapshot weight {top:.3f}")


if __name__ == "__main__":
    main()
