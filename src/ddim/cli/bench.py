"""`ddim bench`: sampling and training throughput, fp32 eager against the fast path."""

from __future__ import annotations

import argparse
import json

import torch

from ddim.cli._common import add_overwrite_argument, add_skip_argument, check_count
from ddim.errors import DdimError

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
    add_skip_argument(parser, default="uniform", help="timestep sub-sequence (default uniform)")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after a warm-up")
    parser.add_argument("--compile", action="store_true", help="add torch.compile to the fast path")
    parser.add_argument("--paths", nargs="+", metavar="NAME",
                        help="only these sampling paths, by the names the table prints (e.g. "
                             "'bf16', or 'default'); with --compile each is also timed compiled")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its convolution algorithms first "
                             "(torch.backends.cudnn.benchmark; CUDA only)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one network call of each sampling path: time by kind "
                             "of work (convolution, normalization, casts, ...) and the top "
                             "kernels, printed and in the JSON")
    parser.add_argument("--data", help="train on this dataset (through the data module)")
    parser.add_argument("--subdir", help="sub-folder of --data, e.g. train")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's dense bf16 peak for '%% of peak' (e.g. 800 for an H100)",
    )
    parser.add_argument("--ckpt", help="sample with these weights (a trained model: image "
                        "differences between paths mean something only then); default random")
    parser.add_argument("--no-diffusers", action="store_true",
                        help="skip diffusers' DDIM loop even when diffusers is installed")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    parser.add_argument("-o", "--output", help="write the results as JSON here")
    add_overwrite_argument(parser)


def run(args) -> int:
    """Run the chosen benchmarks, print a table, and write it as JSON with -o."""
    import contextlib

    from ddim.checkpoint import checkpoint_sha256
    from ddim.files import claim_output, file_output

    _check(args)
    config, weights, device = _setup(args)
    claim = contextlib.nullcontext()
    if args.output:
        settings = {
            **{k: v for k, v in vars(args).items() if k not in ("output", "overwrite", "_run")},
            "checkpoint_sha256": checkpoint_sha256(args.ckpt) if args.ckpt else None,
            "config": config.to_dict(), "device": str(device),
        }
        output = file_output(args.output, command="bench")
        claim = claim_output(output, settings, overwrite=args.overwrite)
    with claim:
        results = _measure(args, config, weights, device)
        _report(args, config, device, results)
    return 0


def _check(args) -> None:
    """Reject bad numbers before anything runs; set the thread count."""
    for flag in ("repeats", "batch", "steps", "train_batch"):
        check_count(getattr(args, flag), f"--{flag.replace('_', '-')}")
    if args.peak_tflops is not None and not (0 < args.peak_tflops < float("inf")):
        raise DdimError(f"--peak-tflops must be a positive number, got {args.peak_tflops}")
    if args.threads is not None:
        torch.set_num_threads(check_count(args.threads, "--threads"))


def _setup(args):
    """(config, float32 weights or None, device) from --ckpt or --config, --set and --device."""
    from ddim.checkpoint import config_for_foreign, load_checkpoint
    from ddim.config import apply_overrides, load_config
    from ddim.device import parse_device

    weights = None
    if args.ckpt:
        checkpoint = load_checkpoint(args.ckpt)
        config, weights = config_for_foreign(checkpoint), checkpoint.weights()
        weights = {k: v.float() for k, v in weights.items()}
    else:
        config = load_config(args.config)
    config = apply_overrides(config, args.set)
    device = parse_device(args.device) or torch.device(
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    return config, weights, device


def _measure(args, config, weights, device) -> list:
    """The sampling and training benchmarks asked for by --what."""
    from ddim.cli._common import data_overrides
    from ddim.config import apply_overrides
    from ddim.experiments.bench import bench_sampling, bench_training
    from ddim.training import load_training_images

    results = []
    if "sample" in args.what:
        results += bench_sampling(
            config, device=device, batch=args.batch, steps=args.steps, skip=args.skip,
            repeats=args.repeats, compile=args.compile, peak_tflops=args.peak_tflops,
            weights=weights, diffusers=not args.no_diffusers, paths=args.paths,
            cudnn_benchmark=args.cudnn_benchmark, profile=args.profile,
        )  # fmt: skip
    if "train" in args.what:
        images = None
        if args.data:
            overrides = data_overrides(args.data, args.subdir)
            images = load_training_images(apply_overrides(config, overrides))
        results += bench_training(
            config, device=device, batch=args.train_batch, repeats=args.repeats * 5,
            compile=args.compile, peak_tflops=args.peak_tflops, images=images,
        )  # fmt: skip
    return results


def _report(args, config, device, results) -> None:
    """Print the results as a markdown table; with -o, write them as JSON too."""
    from ddim.experiments.bench import as_rows, describe_device
    from ddim.files import write_text

    print(f"device: {describe_device(device)}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print("| task | path | batch | images/s | TFLOP/s | % of peak | peak GiB | note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        percent = "" if r.percent_of_peak is None else f"{r.percent_of_peak:.1f}"
        memory = "" if r.peak_memory_gib is None else f"{r.peak_memory_gib:.2f}"
        print(
            f"| {r.task} | {r.path} | {r.batch} | {r.images_per_s:.1f} | {r.tflops:.3f} | "
            f"{percent} | {memory} | {r.note} |"
        )
    profiled = [r for r in results if r.profile]
    if profiled:
        print(f"\nwhere one network call spends its time (batch {profiled[0].batch}, "
              f"t = T/2; {profiled[0].profile['clock']}' self time):")
    for r in profiled:
        kinds = " · ".join(f"{kind} {v['share']:.0%}" for kind, v in r.profile["by_kind"].items())
        top = "; ".join(f"{o['name'][:60]} {o['ms']:.2f} ms" for o in r.profile["top"][:3])
        print(f"- {r.path}: {r.profile['total_ms']:.1f} ms: {kinds}\n  top: {top}")
    if args.output:
        record = {"device": describe_device(device), "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "checkpoint": args.ckpt,
                  "config": config.to_dict(), "results": as_rows(results)}
        write_text(args.output, json.dumps(record, indent=2))
