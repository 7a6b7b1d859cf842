import json
import subprocess
import sys

import pytest
import torch
from conftest import TINY

from ddim.config import apply_overrides, load_config
from ddim.experiments.bench import bench_sampling, bench_training, forward_flops
from ddim.network.unet import UNet


def test_cifar10_network_costs_12_4_gflop_per_forward():
    config = load_config("cifar10")
    flops = forward_flops(UNet.from_config(config.model, 32), config, torch.device("cpu"))
    assert abs(flops / 1e9 - 12.44) < 0.01


@pytest.mark.parametrize("bf16", ["0", "1"])
def test_benchmarks_run_on_cpu_with_and_without_native_bf16(bf16, monkeypatch):
    monkeypatch.setenv("DDIM_CPU_BF16", bf16)
    config = apply_overrides(load_config("tiny"), TINY)
    cpu = torch.device("cpu")
    sampling = bench_sampling(config, device=cpu, batch=4, steps=3, repeats=1, diffusers=False)
    paths = [r.path for r in sampling]
    assert paths[0] == "fp32 eager" and paths[1].startswith("fp32 channels-last")
    assert ("bf16" in paths) == (bf16 == "1")  # bf16 only where it is native
    assert sum(path.endswith("(default)") for path in paths) == 1
    assert all(r.images_per_s > 0 and r.tflops > 0 for r in sampling)
    # channels-last is the same float32 arithmetic in another order: at most one level apart
    assert "max |Δ| 0 " in sampling[1].note or "max |Δ| 1 " in sampling[1].note
    training = bench_training(config, device=cpu, batch=4, repeats=2)
    default = ("bf16 autocast, " if bf16 == "1" else "") + "channels-last (ddim train's default)"
    assert [r.path for r in training] == ["fp32 eager", default]
    assert all(r.peak_memory_gib is None for r in sampling + training)


def test_paths_can_be_chosen_and_compiled_and_cudnn_benchmark_is_restored(monkeypatch):
    """--paths keeps the named paths (an unknown name is refused, naming the ones there are),
    --compile adds each kept one compiled, and --cudnn-benchmark marks every row (off CUDA: as
    having no effect) and leaves the global flag as it found it."""
    from ddim.errors import DdimError
    from ddim.experiments.bench import sampling_paths

    monkeypatch.setenv("DDIM_CPU_BF16", "1")
    cpu = torch.device("cpu")
    chosen = sampling_paths(cpu, compile=True, only=["bf16", "fp32 eager"])
    assert list(chosen) == ["fp32 eager", "bf16", "bf16 + compile"]
    assert chosen["bf16 + compile"].compile and chosen["bf16"].bf16
    with pytest.raises(DdimError, match="'bf17'.*'bf16, channels-last'"):
        sampling_paths(cpu, only=["bf17"])
    config = apply_overrides(load_config("tiny"), TINY)
    rows = bench_sampling(config, device=cpu, batch=2, steps=2, repeats=1, diffusers=False,
                          paths=["default", "bf16"], cudnn_benchmark=True)  # fmt: skip
    assert [r.path for r in rows] == ["bf16 (cudnn.benchmark: not CUDA)",
                                      "bf16, channels-last (default) (cudnn.benchmark: not CUDA)"]
    assert rows[1].note.startswith("vs bf16: ")
    assert torch.backends.cudnn.benchmark is False


def test_diffusers_loop_on_our_weights_gives_our_images():
    pytest.importorskip("diffusers")
    config = apply_overrides(load_config("tiny"), TINY)
    sampling = bench_sampling(config, device=torch.device("cpu"), batch=2, steps=4, repeats=1)
    assert sampling[-1].path.startswith("diffusers")
    assert "max |Δ| 0 " in sampling[-1].note or "max |Δ| 1 " in sampling[-1].note


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
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "| sample | fp32 eager |" in result.stdout
    record = json.loads(out.read_text())
    assert [r["task"] for r in record["results"]].count("train") >= 1
    assert record["threads"] >= 1 and "device" in record


def test_profile_splits_one_network_call_by_kind_of_work(monkeypatch):
    """--profile: each path's self times sum to its total, shares to one, the convolutions are
    found among the CPU's operators, and GPU kernel names are sorted into the same kinds."""
    from ddim.experiments.bench import OTHER, op_kind

    monkeypatch.setenv("DDIM_CPU_BF16", "1")
    config = apply_overrides(load_config("tiny"), TINY)
    rows = bench_sampling(config, device=torch.device("cpu"), batch=2, steps=2, repeats=1,
                          diffusers=False, paths=["fp32 eager", "pure bf16"], profile=True)
    for row in rows:
        profile = row.profile
        kinds = profile["by_kind"]
        assert abs(sum(v["ms"] for v in kinds.values()) - profile["total_ms"]) < 1e-6
        assert abs(sum(v["share"] for v in kinds.values()) - 1) < 1e-9
        assert kinds["convolution and matmul"]["ms"] > 0
        assert profile["top"][0]["ms"] == max(o["ms"] for o in profile["top"])
    assert "normalization" in rows[0].profile["by_kind"]
    assert bench_sampling(config, device=torch.device("cpu"), batch=2, steps=2, repeats=1,
                          diffusers=False, paths=["fp32 eager"])[0].profile is None
    names = {
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_nhwckrsc_nchw": "convolution and matmul",
        "void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<float>": "normalization",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<256>>": "attention",
        "triton_per_fused_native_group_norm_silu_0": "normalization",
        "triton_poi_fused_add_silu_3": "compiled (fused)",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>": "layout and casts",
        "void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel>": OTHER,
    }
    assert {name: op_kind(name) for name in names} == names
