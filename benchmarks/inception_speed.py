"""Inception (FID's network) on the CPU: the plain TorchScript module against the frozen,
inference-optimised, channels-last one that `ddim.evaluation.load_inception` returns, and a bf16
variant.

Prints images/s of each on the same real images, the largest feature difference to the plain
module, and the FID of the images against a reference stats file by each path, so the bf16
deviation is measured rather than assumed. Usage:

    python benchmarks/inception_speed.py DATA --subdir test --ref refs/cifar10-test.npz [--n 512]
"""

import argparse
import time
import warnings

import numpy as np
import torch

from ddim import evaluation
from ddim.data import open_dataset, spread_indices, take_images


def plain_inception() -> torch.jit.ScriptModule:
    """The network as loaded before any optimisation."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is deprecated", DeprecationWarning)
        return torch.jit.load(str(evaluation.inception_path()), map_location="cpu").eval()


def features(model, images: torch.Tensor, batch: int, *, channels_last: bool, bf16: bool):
    """(float64 features, images/s) of uint8 images through `model`."""
    out, start = [], None
    with torch.inference_mode():
        for k, part in enumerate(images.split(batch)):
            if k == 1:
                start = time.perf_counter()  # the first batch warms up
            x = evaluation.preprocess(part)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if bf16:
                x = x.to(torch.bfloat16)
            out.append(model(x).double().numpy())
    rate = (len(images) - batch) / (time.perf_counter() - start)
    return np.concatenate(out), rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--subdir")
    parser.add_argument("--ref", required=True, help="stats from `ddim fid ref`")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    data = open_dataset(args.data, subdir=args.subdir)
    images = take_images(data, spread_indices(len(data), args.n))
    ref = evaluation.load_stats(args.ref)
    paths = {
        "plain TorchScript, contiguous": (plain_inception(), False, False),
        "frozen + optimize_for_inference, channels-last (ddim fid)": (
            evaluation.load_inception("cpu"), True, False),
        "bf16 weights and input, frozen": (
            torch.jit.freeze(plain_inception().to(torch.bfloat16)), False, True),
    }
    print(f"{args.n} images of {args.data} [{args.subdir}], batch {args.batch}, "
          f"{torch.get_num_threads()} threads; FID against {args.ref} (n = {ref.n})")
    baseline = None
    for name, (model, channels_last, bf16) in paths.items():
        feats, rate = features(model, images, args.batch, channels_last=channels_last, bf16=bf16)
        baseline = feats if baseline is None else baseline
        mu, sigma = evaluation.statistics(feats)
        score = evaluation.frechet_distance(mu, sigma, ref.mu, ref.sigma)
        diff = np.abs(feats - baseline).max()
        print(f"- {name}: {rate:.2f} img/s, max |Δ feature| {diff:.2e}, FID {score:.4f}")


if __name__ == "__main__":
    main()
