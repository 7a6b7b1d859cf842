"""`ddim bench`: sampling and training throughput, fp32 eager against the fast path."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

HELP = "Benchmark sampling and training: images/s, TFLOP/s, % of peak, peak memory (JSON too)."
EXAMPLE = (
    "ddim bench --config cifar10 --batch 500 --steps 50 --train-batch 128 --compile -o bench.json"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim bench`."""
    parser.add_argument("--config", default="cifar10", help="config name or YAML (the network)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument(
        "--what", nargs="+", choices=["sample", "train"], default=["sample", "train"]
    )
    parser.add_argument("--batch", type=int, default=500, help="sampling batch (default 500)")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps S (default 50)")
    parser.add_argument("--skip", default="uniform", choices=["uniform", "quad", "trailing"])
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after a warm-up")
    parser.add_argument("--compile", action="store_true", help="add torch.compile to the fast path")
    parser.add_argument("--data", help="train on this dataset (through the data module)")
    parser.add_argument("--subdir", help="sub-folder of --data, e.g. train")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's dense bf16 peak for '%% of peak' (e.g. 800 for an H100)",
    )
    parser.add_argument("-o", "--output", help="write the results as JSON here")


def run(args) -> int:
    """Run the chosen benchmarks and print a table."""
    from ddim.bench import as_rows, bench_sampling, bench_training
    from ddim.cli.train import data_overrides
    from ddim.config import apply_overrides, load_config
    from ddim.train import load_training_images

    config = apply_overrides(load_config(args.config), args.set)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results = []
    if "sample" in args.what:
        results += bench_sampling(
            config,
            device=device,
            batch=args.batch,
            steps=args.steps,
            skip=args.skip,
            repeats=args.repeats,
            compile=args.compile,
            peak_tflops=args.peak_tflops,
        )
    if "train" in args.what:
        images = None
        if args.data:
            overrides = data_overrides(args.data, args.subdir)
            images = load_training_images(apply_overrides(config, overrides))
        results += bench_training(
            config,
            device=device,
            batch=args.train_batch,
            repeats=args.repeats * 5,
            compile=args.compile,
            peak_tflops=args.peak_tflops,
            images=images,
        )
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print("| task | path | batch | images/s | TFLOP/s | % of peak | peak GiB | note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        percent = "" if r.percent_of_peak is None else f"{r.percent_of_peak:.1f}"
        memory = "" if r.peak_memory_gib is None else f"{r.peak_memory_gib:.2f}"
        print(
            f"| {r.task} | {r.path} | {r.batch} | {r.images_per_s:.1f} | {r.tflops:.3f} | "
            f"{percent} | {memory} | {r.note} |"
        )
    if args.output:
        record = {"device": str(device), "config": config.to_dict(), "results": as_rows(results)}
        Path(args.output).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return 0
