"""ε-prediction error of checkpoints on held-out images: per t, beside the trivial ε̂ = x_t, and
averaged over a uniform grid of t (an estimate of the simple loss L_simple on unseen data).

At large t, x_t ≈ ε, so ε̂ = x_t is nearly optimal; a network whose error there is far above it
makes DDIM's x0 prediction, (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t, wrong by about √(mse (1 − ᾱ_t)/ᾱ_t), which
saturates deterministic samples while DDPM's clipping hides it. Every checkpoint sees the same
images, t and ε, so their numbers compare directly (training runs at equal CPU hours, say).
Usage:

    python benchmarks/eps_error_by_t.py CKPT [CKPT ...] --data DATA [--subdir test] [--n 256]
"""

import argparse

import torch

from ddim.checkpoint import load_checkpoint, model_from_checkpoint
from ddim.data import open_dataset, spread_indices, take_images, to_model_range
from ddim.diffusion.schedule import alpha_bars


def eps_mse(net, x_0: torch.Tensor, alpha_bar: torch.Tensor, t: int, seed: int) -> tuple:
    """(network ε-MSE, trivial ε̂ = x_t MSE, the share of the network's error that is a constant
    per image and channel) at timestep t for fixed noise drawn from `seed`."""
    a = float(alpha_bar[t])
    eps = torch.randn(x_0.shape, generator=torch.Generator().manual_seed(seed))
    x_t = a**0.5 * x_0 + (1 - a) ** 0.5 * eps
    with torch.no_grad():
        pred = torch.cat([net(x, torch.full((len(x),), t)) for x in x_t.split(128)])
    error = pred - eps
    mse = error.square().mean().item()
    mean_part = error.mean(dim=(2, 3)).square().mean().item()
    return mse, (x_t - eps).square().mean().item(), mean_part / mse


def report(path: str, x_0: torch.Tensor, args) -> None:
    """Print one checkpoint's per-t table and its grid average."""
    checkpoint = load_checkpoint(path)
    net = model_from_checkpoint(checkpoint, use_ema=not args.raw)
    alpha_bar = alpha_bars(checkpoint.config.diffusion.betas())
    T = len(alpha_bar)
    state = checkpoint.load_train_state() or {}
    cpu = state.get("cpu_seconds")
    batch = checkpoint.config.training.batch_size
    grid = [int((k + 0.5) * T / args.grid) for k in range(args.grid)]
    mean = sum(eps_mse(net, x_0, alpha_bar, t, seed=t)[0] for t in grid) / len(grid)
    print(f"\n{path}: step {checkpoint.step}, {checkpoint.step * batch:,} images seen, "
          + (f"{cpu / 3600:.2f} CPU hours, " if cpu is not None else "")
          + f"{'raw' if args.raw else 'EMA'} weights, {len(x_0)} images")
    print(f"ε-MSE averaged over {args.grid} evenly spaced t (≈ L_simple): {mean:.5f}\n")
    print("| t | network ε-MSE | ε̂ = x_t MSE | x0 error (rms) | per-image channel means |")
    print("| --- | --- | --- | --- | --- |")
    for t in args.t:
        mse, trivial, mean_share = eps_mse(net, x_0, alpha_bar, t, seed=t)
        a = float(alpha_bar[t])
        print(f"| {t} | {mse:.2e} | {trivial:.2e} | {(mse * (1 - a) / a) ** 0.5:.2f} | "
              f"{mean_share:.0%} of the error |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", nargs="+")
    parser.add_argument("--data", required=True, help="held-out images (folder, zip, .npz)")
    parser.add_argument("--subdir")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--raw", action="store_true", help="raw weights instead of EMA")
    parser.add_argument("--t", type=int, nargs="+", default=[999, 950, 800, 500, 200, 50])
    parser.add_argument("--grid", type=int, default=20, help="t values in the average")
    args = parser.parse_args()
    size = load_checkpoint(args.ckpt[0]).image_size
    data = open_dataset(args.data, subdir=args.subdir, resolution=size)
    x_0 = to_model_range(take_images(data, spread_indices(len(data), args.n)))
    for path in args.ckpt:
        report(path, x_0, args)


if __name__ == "__main__":
    main()
