import json
import subprocess
import sys

import torch
from conftest import TINY

from ddim.bench import bench_sampling, bench_training, forward_flops
from ddim.config import apply_overrides, load_config
from ddim.unet import UNet


def test_cifar10_network_costs_12_4_gflop_per_forward():
    config = load_config("cifar10")
    flops = forward_flops(UNet.from_config(config.model, 32), config, torch.device("cpu"))
    assert abs(flops / 1e9 - 12.44) < 0.01


def test_benchmarks_run_on_cpu_and_the_fast_path_falls_back_to_fp32():
    config = apply_overrides(load_config("tiny"), TINY)
    cpu = torch.device("cpu")
    sampling = bench_sampling(config, device=cpu, batch=4, steps=3, repeats=1)
    assert [r.path for r in sampling] == ["fp32 eager", "fast"]
    assert all(r.images_per_s > 0 and r.tflops > 0 for r in sampling)
    assert "max |Δ| 0" in sampling[1].note  # on the CPU both paths are the same fp32 loop
    training = bench_training(config, device=cpu, batch=4, repeats=2)
    assert [r.task for r in training] == ["train", "train"]
    assert all(r.peak_memory_gib is None for r in sampling + training)


def test_bench_command_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    sets = [a for o in TINY for a in ("--set", o)]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ddim",
            "bench",
            "--config",
            "tiny",
            *sets,
            "--batch",
            "4",
            "--steps",
            "2",
            "--train-batch",
            "4",
            "--repeats",
            "1",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "| sample | fp32 eager |" in result.stdout
    assert len(json.loads(out.read_text())["results"]) == 4
