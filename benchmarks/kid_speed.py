"""Time of KID at its defaults (100 subsets of 1,000 features per set, float64) against the set
sizes, on random non-negative stand-ins for Inception features (the cost depends on the sizes
only). Usage:

    python benchmarks/kid_speed.py [--n 2000] [--ref-n 10000] [--threads 1]
"""

import argparse
import time

import numpy as np
import torch

from ddim.evaluation import FEATURE_DIM, KID_FEATURES, kernel_inception_distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="generated features")
    parser.add_argument("--ref-n", type=int, default=KID_FEATURES, help="reference features")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    features = rng.gamma(2.0, 0.2, size=(args.n, FEATURE_DIM)).astype(np.float32)
    ref = rng.gamma(2.0, 0.2, size=(args.ref_n, FEATURE_DIM)).astype(np.float32)
    start = time.perf_counter()
    kid = kernel_inception_distance(features, ref)
    seconds = time.perf_counter() - start
    print(f"KID of {args.n} against {args.ref_n} features, {kid.n_subsets} subsets of "
          f"{kid.subset_size}, {args.threads} thread(s): {seconds:.1f} s "
          f"(value {kid.mean:.2e} ± {kid.std:.2e}: same distribution, about 0)")


if __name__ == "__main__":
    main()
