"""ε-prediction error of a checkpoint at several t, beside the trivial predictor ε̂ = x_t.

At large t, x_t ≈ ε, so ε̂ = x_t is nearly optimal; a network whose error there is far above it
makes DDIM's x0 prediction, (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t, wrong by about √(mse (1 − ᾱ_t)/ᾱ_t), which
saturates deterministic samples while DDPM's clipping hides it. Usage:

    python benchmarks/eps_error_by_t.py CKPT DATA [--subdir test] [--n 256] [--raw]
"""

import argparse

import torch

from ddim.checkpoint import load_checkpoint, model_from_checkpoint
from ddim.data import open_dataset, to_model_range
from ddim.generate import betas_of
from ddim.schedule import alpha_bars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("data")
    parser.add_argument("--subdir")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--raw", action="store_true", help="raw weights instead of EMA")
    parser.add_argument("--t", type=int, nargs="+", default=[999, 950, 800, 500, 200, 50])
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.ckpt)
    net = model_from_checkpoint(checkpoint, use_ema=not args.raw)
    size = checkpoint.image_size
    data = open_dataset(args.data, subdir=args.subdir, resolution=size)
    x_0 = to_model_range(torch.stack([data[i] for i in range(min(args.n, len(data)))]))
    alpha_bar = alpha_bars(betas_of(checkpoint.config))
    g = torch.Generator().manual_seed(0)
    print("| t | network ε-MSE | ε̂ = x_t MSE | x0 error (rms) |")
    print("| --- | --- | --- | --- |")
    for t in args.t:
        a = float(alpha_bar[t])
        eps = torch.randn(x_0.shape, generator=g)
        x_t = a**0.5 * x_0 + (1 - a) ** 0.5 * eps
        with torch.no_grad():
            mse = (net(x_t, torch.full((len(x_0),), t)) - eps).square().mean().item()
        trivial = (x_t - eps).square().mean().item()
        print(f"| {t} | {mse:.2e} | {trivial:.2e} | {(mse * (1 - a) / a) ** 0.5:.2f} |")


if __name__ == "__main__":
    main()
