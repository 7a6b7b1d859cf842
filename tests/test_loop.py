"""Training on the CPU at tiny size: the loss falls, resume is exact, DDP equals one process,
signals and crashes never lose a checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ddim.training.loop as loop_module
import ddim.training.recipe as recipe_module
from ddim.checkpoint import load_checkpoint
from ddim.diffusion.schedule import alpha_bars
from ddim.errors import DdimError
from ddim.training import latest_checkpoint, new_run_dir, train


def weights(path):
    ckpt = load_checkpoint(path)
    return ckpt.model_state, ckpt.ema_state


def test_loss_falls(tmp_path, blobs, small_config):
    config = small_config("training.n_iters=120", "training.lr=1e-3")
    last = train(config, tmp_path, images=blobs(), log_every=20, sample_every=0, progress=False)
    losses = [
        json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(losses) == 6
    assert losses[-1] < 0.6 * losses[0], losses
    assert load_checkpoint(last).step == 120
    assert (tmp_path / "config.yml").exists()


def test_resume_is_exact(tmp_path, blobs, small_config):
    config = small_config("training.n_iters=8", "model.dropout=0.1")
    images = blobs()
    straight = train(config, tmp_path / "a", images=images, sample_every=0, progress=False)
    train(config, tmp_path / "b", images=images, max_steps=4, sample_every=0, progress=False)
    resumed = train(
        config, tmp_path / "b", images=images, resume=tmp_path / "b", sample_every=0, progress=False
    )
    (m1, e1), (m2, e2) = weights(straight), weights(resumed)
    assert load_checkpoint(resumed).step == 8
    for key in m1:
        torch.testing.assert_close(m1[key], m2[key], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(e1[key], e2[key], rtol=1e-6, atol=1e-7)


def test_sample_grid_and_run_dirs(tmp_path, blobs, small_config):
    config = small_config("training.n_iters=2", "sampling.steps=3")
    train(config, tmp_path, images=blobs(16), checkpoint_every=2, progress=False)
    assert (tmp_path / "samples" / "step-00000002.png").exists()
    first, second = new_run_dir(tmp_path / "runs", "x"), new_run_dir(tmp_path / "runs", "x")
    assert first.name == "00000-x" and second.name == "00001-x"


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path, monkeypatch, blobs, small_config
):
    config = small_config("training.n_iters=6")
    real = recipe_module.simple_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(recipe_module, "simple_loss", poisoned)
    with pytest.raises(DdimError, match="non-finite"):
        train(config, tmp_path, images=blobs(), checkpoint_every=2, log_every=1, progress=False)
    good = latest_checkpoint(tmp_path)
    assert load_checkpoint(good).step == 2
    assert all(torch.isfinite(v).all() for v in weights(good)[0].values())


def test_two_process_torchrun_equals_one_process(tmp_path, blobs, cli_train, write_npz):
    data = write_npz(tmp_path / "blobs.npz", blobs())
    common = [
        "--data",
        str(data),
        "--set",
        "training.n_iters=3",
        "--workers",
        "0",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--sample-every",
        "0",
        "--no-amp",  # bf16 rounds differently at another per-process batch: compare in fp32
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run(
        cli_train(*common, "--run-dir", str(tmp_path / "one")),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
    ]
    two = subprocess.run(
        torchrun + cli_train(*common, "--run-dir", str(tmp_path / "two"))[1:],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    (m1, e1) = weights(latest_checkpoint(tmp_path / "one"))
    (m2, e2) = weights(latest_checkpoint(tmp_path / "two"))
    for key in m1:
        torch.testing.assert_close(m1[key], m2[key], rtol=1e-4, atol=1e-5)


def test_sigterm_writes_a_checkpoint_and_sigkill_loses_nothing(
    tmp_path, blobs, cli_train, write_npz
):
    data = write_npz(tmp_path / "blobs.npz", blobs())
    run_dir = tmp_path / "run"
    command = cli_train(
        "--data",
        str(data),
        "--set",
        "training.n_iters=100000",
        "--run-dir",
        str(run_dir),
        "--checkpoint-every",
        "3",
        "--keep",
        "2",
        "--sample-every",
        "0",
        "--workers",
        "0",
        "--log-every",
        "1",
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rng = np.random.default_rng(0)
    steps = [0]
    for round_ in range(4):  # SIGKILL at random moments (mid-checkpoint too), then resume
        resume = ["--resume", str(run_dir)] if round_ else []
        proc = subprocess.Popen(
            command + resume, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_for_checkpoint(run_dir, after_step=steps[-1], timeout=120)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        steps.append(load_checkpoint(latest_checkpoint(run_dir)).step)
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    log = tmp_path / "resume.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            command + ["--resume", str(run_dir)], env=env, stdout=subprocess.DEVNULL,
            stderr=stderr, text=True,
        )
        _wait_for_checkpoint(run_dir, after_step=steps[-1], timeout=120)
        before = load_checkpoint(latest_checkpoint(run_dir)).step
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 0
    after = load_checkpoint(latest_checkpoint(run_dir)).step
    message = f"stopped by signal {int(signal.SIGTERM)} at step {after}"
    assert after >= before and message in log.read_text()
    final = load_checkpoint(latest_checkpoint(run_dir))
    assert final.load_train_state()["step"] == after  # weights and their training state agree
    assert all(torch.isfinite(v).all() for v in final.model_state.values())


def _wait_for_checkpoint(run_dir: Path, after_step: int, timeout: float):
    """Wait until a checkpoint newer than `after_step` exists (names carry the step)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        names = (run_dir / "checkpoints").glob("ckpt-*.safetensors")
        if any(int(p.stem.split("-")[1]) > after_step for p in names):
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint after step {after_step} appeared")


def test_dry_run_prints_the_resolved_config(tmp_path):
    """A dataset name is not fetched by a dry run; without data the config is still printed, and
    the dry run refuses what the run would (no data.path)."""
    command = [sys.executable, "-m", "ddim", "train", "--config", "cifar10", "--set",
               "training.lr=1e-4", "--dry-run"]  # fmt: skip
    env = dict(os.environ, DDIM_CACHE=str(tmp_path / "cache"), DDIM_OFFLINE="1")
    out = subprocess.run([*command, "--data", "cifar10", "--subdir", "train"], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "lr: 0.0001" in out.stdout and "ch: 128" in out.stdout
    assert not (tmp_path / "cache").exists()
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "data.path is not set" in out.stderr
    assert "lr: 0.0001" in out.stdout


def test_device_resolution_gives_cuda_an_index():
    from ddim.device import resolve_device

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_device(cuda, 3, True) == torch.device("cuda", 3)  # set_device needs an index
    assert resolve_device(torch.device("cuda", 1), 3, True) == torch.device("cuda", 1)
    assert resolve_device(None, 2, True) == torch.device("cuda", 2)
    assert resolve_device(None, 0, False) == cpu and resolve_device(cpu, 0, True) == cpu


class _DropsDeepGradients(torch.nn.Module):
    """A stand-in for a compiled network that gets the gradients of every layer past the first
    level wrong (none at all), as torch.compile under bf16 autocast on the CPU was seen to."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        params = {name: (p if name.startswith(("conv_in", "down.0.block")) else p.detach())
                  for name, p in self.net.named_parameters()}  # fmt: skip
        return torch.func.functional_call(self.net, params, (x, t))


def test_a_compiled_network_with_wrong_gradients_is_found_and_refused(
    tmp_path, blobs, small_config, monkeypatch
):
    config = small_config("training.n_iters=2")
    state = recipe_module.init_training(config, torch.device("cpu"))
    with torch.no_grad():  # the reference initialisation zeroes some layers: wake them
        for p in state.net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    alpha_bar = alpha_bars(config.diffusion.betas()).float()
    x_0 = torch.rand(2, 3, 8, 8) * 2 - 1
    objective = recipe_module.Objective.from_config(config)
    errors = recipe_module.compiled_gradient_errors
    assert errors(state, state.net, x_0, alpha_bar, objective, amp=False) == []
    wrong = errors(state, _DropsDeepGradients(state.net), x_0, alpha_bar, objective, amp=True)
    deep = [n for n, _ in state.net.named_parameters()
            if not n.startswith(("conv_in", "down.0.block"))]  # fmt: skip
    assert wrong == deep and all(p.grad is None for p in state.net.parameters())
    # train(compile=True) checks before its first step, and refuses in one line
    monkeypatch.setattr(loop_module, "compile_blocks", _DropsDeepGradients)
    with pytest.raises(DdimError, match=r"torch.compile gives \d+ of \d+ parameters a zero"):
        train(config, tmp_path, images=blobs(16), compile=True, sample_every=0, progress=False)
    assert not (tmp_path / "checkpoints").exists()
