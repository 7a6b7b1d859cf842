"""Which precision path keeps a trained model's DDIM images unchanged, and how fast each is.

For each path of `ddim.experiments.bench.sampling_paths` (fp32 eager, channels-last, bf16
autocast, bf16 with fp32 kept for the noisiest steps, compiled variants), DDIM (η = 0) samples the
same seeds at each S and reports: images/s, the uint8 difference to fp32 eager (mean, max, share
of values that differ), and the quality metrics of `ddim.evaluation.pixel_metrics` against
reference images, so a difference can be judged against the metric's run-to-run noise (printed
too: the same metrics on a second set of seeds with fp32 eager). Usage:

    python benchmarks/sampling_precision.py CKPT --data DATA [--subdir test] [--n 256]
    python benchmarks/sampling_precision.py demo/run/checkpoints/ckpt-*.safetensors --shapes
"""

import argparse
import time

import torch

from ddim.checkpoint import load_checkpoint, model_from_checkpoint
from ddim.data import open_dataset, take_images
from ddim.data.shapes import shapes
from ddim.evaluation import pixel_metrics as pm
from ddim.evaluation.distances import statistics
from ddim.experiments.bench import image_difference, sampling_paths
from ddim.experiments.demo import HELD_OUT
from ddim.network.precision import eps_model_for
from ddim.sampling import build_sampler, iterate_images


def scores(images: torch.Tensor, reference: torch.Tensor, stats) -> str:
    """Pixel FD, precision, recall and saturated share as one string."""
    precision, recall = pm.precision_recall(images, reference)
    return (f"pixel FD {pm.pixel_fd(images, stats):.4f}, precision {precision:.3f}, "
            f"recall {recall:.3f}, saturated {pm.saturated_fraction(images):.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--data", help="reference images (folder, zip, .npz)")
    parser.add_argument("--subdir")
    parser.add_argument("--shapes", action="store_true", help="reference: held-out demo shapes")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.ckpt)
    config, size = checkpoint.config, checkpoint.image_size
    if args.shapes:
        reference = shapes(args.n, seed=HELD_OUT, size=size)
    else:
        dataset = open_dataset(args.data, subdir=args.subdir, resolution=size)
        reference = take_images(dataset, range(args.n))
    stats = statistics(pm.pixel_features(reference))
    net, betas, device = model_from_checkpoint(checkpoint), config.diffusion.betas(), "cpu"
    shape = (config.model.in_channels, size, size)
    for S in args.steps:
        sampler = build_sampler(betas, S, config.sampling.skip, eta=0.0)
        print(f"\n## S = {S} ({sampler.skip}), {args.n} images, {torch.get_num_threads()} threads")
        baseline = None
        for name, precision in sampling_paths(torch.device(device), args.compile).items():
            eps_model = eps_model_for(model_from_checkpoint(checkpoint), precision)
            start = time.perf_counter()
            images = torch.cat(list(iterate_images(eps_model, sampler, range(args.n), shape,
                                                   batch=args.batch, device=device)))
            rate = args.n / (time.perf_counter() - start)
            baseline = images if baseline is None else baseline
            diff = "" if images is baseline else "; " + image_difference(baseline, images)
            print(f"- {name}: {rate:.1f} img/s; {scores(images, reference, stats)}{diff}")
        again = torch.cat(list(iterate_images(eps_model_for(net), sampler,
                                              range(args.n, 2 * args.n), shape, batch=args.batch,
                                              device=device)))
        print(f"- run-to-run noise (fp32, seeds {args.n}–{2 * args.n - 1}): "
              f"{scores(again, reference, stats)}")


if __name__ == "__main__":
    main()
