"""Compare recipes for the demo's small model: train with config overrides, then score DDIM and
its rivals on 256 held-out shapes, the measurements behind docs/training.md's recipe tables.

Each run trains the demo's config (`ddim.experiments.demo.demo_config`) with `--set` overrides and
`--steps`, then samples seeds 0–255 with DDIM (η = 0) at S = 10, 20, 50 and with η = 1 and DDPM σ̂
at S = 20, and prints pixel FD, the share of saturated samples, precision and recall
(`ddim.evaluation.pixel_metrics`). `--ckpt` scores existing checkpoints instead. Usage:

    python benchmarks/demo_recipe.py --out runs/recipe/x0 --steps 3000 \\
        --set training.loss_weighting=x0_truncated --set training.loss_gamma=100
    python benchmarks/demo_recipe.py --ckpt runs/recipe/long/checkpoints/ckpt-00006000.safetensors
"""

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from ddim.checkpoint import load_checkpoint, load_model
from ddim.config import apply_overrides
from ddim.data.shapes import shapes
from ddim.evaluation import pixel_metrics as pm
from ddim.evaluation.distances import statistics
from ddim.experiments.demo import HELD_OUT, SIZE, DemoSettings, demo_config
from ddim.network.precision import eps_model_for
from ddim.sampling import build_sampler, iterate_images
from ddim.training import train

# name -> (S, sampler, its option), each over S uniform steps
SAMPLERS = {
    "DDIM S=10": (10, "ddim", {"eta": 0.0}),
    "DDIM S=20": (20, "ddim", {"eta": 0.0}),
    "DDIM S=50": (50, "ddim", {"eta": 0.0}),
    "eta=1 S=20": (20, "ddim", {"eta": 1.0}),
    "sigma-hat S=20": (20, "ddpm", {"variance": "large"}),
}


def score(path: Path, n: int = 256) -> dict:
    """The metrics of one checkpoint's samples (fp32 network) against held-out shapes."""
    held_out = shapes(n, seed=HELD_OUT, size=SIZE)
    stats = statistics(pm.pixel_features(held_out))
    net, config = load_model(path)
    eps_model, betas = eps_model_for(net), config.diffusion.betas()
    result = {"checkpoint": str(path), "step": load_checkpoint(path).step}
    for name, (S, kind, option) in SAMPLERS.items():
        sampler = build_sampler(betas, S, "uniform", kind, **option)
        images = torch.cat(list(iterate_images(eps_model, sampler, range(n), (3, SIZE, SIZE),
                                               batch=n, device="cpu")))  # fmt: skip
        precision, recall = pm.precision_recall(images, held_out)
        result[name] = {"pixel_fd": round(pm.pixel_fd(images, stats), 3),
                        "saturated": pm.saturated_fraction(images),
                        "precision": round(precision, 3), "recall": round(recall, 3)}  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="run folder to train into")
    parser.add_argument("--steps", type=int, default=DemoSettings().steps)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--checkpoint-every", type=int, help="keep intermediate checkpoints too")
    parser.add_argument("--ckpt", nargs="+", default=[], help="score these instead of training")
    args = parser.parse_args()
    paths = [Path(p) for p in args.ckpt]
    if not paths:
        settings = replace(DemoSettings(), steps=args.steps)
        config = apply_overrides(demo_config(settings, 0), args.set)
        start = time.perf_counter()
        paths = [train(config, Path(args.out), images=shapes(settings.train_images, seed=0,
                       size=SIZE), device="cpu", checkpoint_every=args.checkpoint_every or
                       args.steps, sample_every=0, progress=False, keep=100)]  # fmt: skip
        print(json.dumps({"overrides": args.set, "steps": args.steps,
                          "train_seconds": round(time.perf_counter() - start)}))  # fmt: skip
    for path in paths:
        print(json.dumps(score(path)), flush=True)


if __name__ == "__main__":
    main()
