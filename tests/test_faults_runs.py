"""Runs that must stay one run, numbers that must say one thing, optional work that must not stop
required work, and a dry run that checks what the run checks (docs/reliability.md).

- A resume restores every setting that decides the arithmetic or the schedule from the run record
  (`RUN/run.json`): a setting given anew is a named, recorded change, or is refused where it
  would make the learning rate jump (a decayed rate warmed up again).
- A metric means the same in every place and on any number of processes: the loss of the global
  batch; `cpu_hours` the weights' lineage, in the metrics as in the checkpoint.
- The decoded-image cache, TensorBoard and the sample grids are optional: failing to write them
  is a one-line warning and the run goes on.
- `ddim train --dry-run` refuses what the run would refuse, and does none of its work.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ddim.cli
import ddim.data.cache as cache_module
import ddim.training
import ddim.training.loop as loop_module
from ddim.checkpoint import load_checkpoint, save_checkpoint
from ddim.errors import DdimError
from ddim.network.unet import UNet
from ddim.training import latest_checkpoint, train
from ddim.training.run_dir import checkpoint_step, run_checkpoints

QUIET = dict(sample_every=0, progress=False)


def run_cli(capsys, *argv) -> tuple[int, str]:
    """`ddim *argv` in-process: (exit code, its one error line or "")."""
    capsys.readouterr()
    code = ddim.cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    if code == 2:
        assert len(errors) == 1 and errors[0].startswith(f"ddim {argv[0]}: error: "), err
    return code, errors[0] if errors else ""


def cli_args(cli_train, *args) -> list[str]:
    """The in-process `ddim train …` arguments of the small config on the CPU."""
    return [*cli_train(*args)[3:], "--workers", "0"]


def steps_of(run):
    return [checkpoint_step(p) for p in run_checkpoints(run)]


def metric_lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def files_of(folder):
    """Every file under `folder` and its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def fake_clock(monkeypatch):
    """A clock that advances one second per reading (the loop's and the log's)."""
    clock = iter(range(10**6))
    monkeypatch.setattr(loop_module.time, "perf_counter", lambda: float(next(clock)))


# --- class 1: a resumed run is the same run -------------------------------------------------


def test_fp32_is_remembered_on_resume(tmp_path, capsys, monkeypatch, cli_train, blobs, write_npz):
    """A run started with --fp32 where bf16 is the default goes on in float32 when resumed
    without the flag."""
    monkeypatch.setenv("DDIM_CPU_BF16", "1")  # bf16 autocast is this CPU's default
    data = write_npz(tmp_path / "data.npz", blobs(16))
    run = tmp_path / "run"
    common = cli_args(cli_train, "--data", data, "--sample-every", "0", "--set",
                      "training.n_iters=4", "--cache-dir", tmp_path / "cache")  # fmt: skip
    assert run_cli(capsys, *common, "--run-dir", run, "--fp32", "--max-steps", "2")[0] == 0
    used = []
    real = loop_module.train_step

    def spy(*args, **kwargs):
        used.append(kwargs["amp"])
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "train_step", spy)
    assert run_cli(capsys, *common, "--resume", run)[0] == 0
    assert used == [False, False]
    assert json.loads((run / "run.json").read_text())["options"]["amp"] is False


def test_a_longer_time_budget_does_not_warm_a_decayed_rate_again(
    tmp_path, capsys, fake_clock, blobs, small_config, write_npz
):
    """A run whose budget is spent has decayed its rate to 0; a resume with a longer budget
    would raise it again: refused in one line naming the budget, both values and what to do."""
    data = write_npz(tmp_path / "data.npz", blobs(16))
    config = small_config("training.n_iters=100000", "training.warmup=0", "training.lr=1e-3",
                          "training.lr_decay_fraction=0.5", f"data.path={data}")  # fmt: skip
    run = tmp_path / "run"
    last = train(config, run, images=blobs(16), time_budget=40, log_every=1, **QUIET)
    assert metric_lines(run)[-1]["lr"] < 0.2e-3
    before = files_of(run / "checkpoints")
    with pytest.raises(DdimError, match=r"^time_budget 400 s would .* learning rate") as error:
        train(config, run, images=blobs(16), resume=run, time_budget=400, **QUIET)
    assert error.value.argument == "time_budget" and "40 s" in str(error.value)
    assert files_of(run / "checkpoints") == before and latest_checkpoint(run) == last
    code, message = run_cli(capsys, "train", "--resume", run, "--time-budget", "400s",
                               "--device", "cpu", "--workers", "0")  # fmt: skip
    assert code == 2 and "--time-budget 400 s would" in message and "40 s" in message
    assert files_of(run / "checkpoints") == before


def test_a_longer_n_iters_does_not_warm_a_decayed_rate_again(tmp_path, blobs, small_config):
    """The same rule for a run whose length is its steps: its rate reached 0 at n_iters."""
    decayed = ("training.warmup=0", "training.lr_decay_fraction=0.5")
    run = tmp_path / "run"
    train(small_config("training.n_iters=4", *decayed), run, images=blobs(16), **QUIET)
    with pytest.raises(DdimError, match=r"training\.n_iters 8 would .* learning rate .* 4"):
        train(small_config("training.n_iters=8", *decayed), run, images=blobs(16), resume=run,
              **QUIET)  # fmt: skip
    assert steps_of(run) == [4]


def test_a_new_time_budget_in_the_stable_phase_is_applied_noted_and_recorded(
    tmp_path, capsys, fake_clock, blobs, small_config
):
    """Before the decay has begun a longer budget leaves the rate where it is: the run takes it,
    says so in one line, and its record names the change and the step it was made at."""
    config = small_config("training.n_iters=100000", "training.lr_decay_fraction=0.5")
    run = tmp_path / "run"
    train(config, run, images=blobs(16), time_budget=1000, max_steps=3, **QUIET)
    capsys.readouterr()
    train(config, run, images=blobs(16), resume=run, time_budget=2000, max_steps=5, **QUIET)
    notes = [line for line in capsys.readouterr().err.splitlines() if "time_budget" in line]
    assert len(notes) == 1 and "1000" in notes[0] and "2000" in notes[0], notes
    record = json.loads((run / "run.json").read_text())
    assert record["options"]["time_budget"] == 2000
    assert record["changes"] == [{"step": 3, "setting": "time_budget", "recorded": 1000,
                                  "given": 2000}]  # fmt: skip


def test_a_branch_keeps_the_cadence_of_the_run_it_continues(tmp_path, blobs, small_config):
    """`--resume RUN/checkpoints/ckpt-2 --run-dir NEW` writes checkpoints and metrics as RUN
    did, and NEW's record holds RUN's options."""
    config = small_config("training.n_iters=6")
    run, branch = tmp_path / "run", tmp_path / "branch"
    train(config, run, images=blobs(16), checkpoint_every=2, keep=10, log_every=1, **QUIET)
    older = run / "checkpoints" / "ckpt-00000002.safetensors"
    train(config, branch, images=blobs(16), resume=older, progress=False)
    assert steps_of(branch) == [4, 6]
    assert [line["step"] for line in metric_lines(branch)] == [3, 4, 5, 6]
    assert not (branch / "samples").exists()
    original = json.loads((run / "run.json").read_text())["options"]
    assert json.loads((branch / "run.json").read_text())["options"] == original


# --- class 2: metrics that tell the truth ---------------------------------------------------


def test_torchrun_logs_the_loss_of_the_global_batch(tmp_path, blobs, cli_train, write_npz):
    """Two processes log the loss one process logs for the same global batch."""
    data = write_npz(tmp_path / "blobs.npz", blobs())
    common = ["--data", str(data), "--set", "training.n_iters=3", "--workers", "0",
              "--sample-every", "0", "--log-every", "1", "--no-amp"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run(cli_train(*common, "--run-dir", str(tmp_path / "one")), env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", "29533"]  # fmt: skip
    two = subprocess.run(torchrun + cli_train(*common, "--run-dir", str(tmp_path / "two"))[1:],
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    single = [line["loss"] for line in metric_lines(tmp_path / "one")]
    double = [line["loss"] for line in metric_lines(tmp_path / "two")]
    assert len(single) == 3
    np.testing.assert_allclose(double, single, rtol=1e-4)


def _worker_of_rank(parent: int, rank: int) -> int:
    """The process id of the torchrun worker of `rank` started by `parent`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f"no worker of rank {rank} under process {parent}")


def test_a_signal_to_one_torchrun_process_stops_all_at_one_step_with_a_checkpoint(
    tmp_path, blobs, cli_train, write_npz
):
    """A signal seen by one rank stops every rank at the next metrics line, where the wish to
    stop is gathered with the loss: exit 0 and a checkpoint of that step (the ranks would
    otherwise part, one waiting for the other's gradients)."""
    data = write_npz(tmp_path / "blobs.npz", blobs())
    run = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", "29534"]  # fmt: skip
    command = torchrun + cli_train(
        "--data", str(data), "--set", "training.n_iters=100000", "--run-dir", str(run),
        "--workers", "0", "--sample-every", "0", "--log-every", "2", "--checkpoint-every",
        "100000", "--no-amp",
    )[1:]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 300
            while not (run / "metrics.jsonl").is_file() or not metric_lines(run):
                assert time.monotonic() < deadline and proc.poll() is None, "no metrics"
                time.sleep(0.1)
            os.kill(_worker_of_rank(proc.pid, 1), signal.SIGTERM)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, (tmp_path / "stderr").read_text()[-3000:]
    step = checkpoint_step(latest_checkpoint(run))
    assert step % 2 == 0 and step == metric_lines(run)[-1]["step"]


def test_cpu_hours_mean_the_lineage_in_the_metrics_as_in_the_checkpoint(
    tmp_path, blobs, small_config
):
    """A warm start from weights that took 2.5 CPU hours logs cpu_hours from 2.5 on, the number
    its checkpoints record; run_cpu_hours is the new run's alone."""
    config = small_config("training.n_iters=2")
    net = UNet.from_config(config.model, config.data.image_size)
    source = save_checkpoint(tmp_path / "source.safetensors", model_state=net.state_dict(),
                             ema_state=net.state_dict(), config=config, step=7,
                             extra_meta={"images_seen": 56, "cpu_hours": 2.5})  # fmt: skip
    run = tmp_path / "run"
    last = train(config, run, images=blobs(16), init=source, log_every=1, **QUIET)
    lines = metric_lines(run)
    assert all(line["cpu_hours"] >= 2.5 for line in lines)
    assert lines[-1]["cpu_hours"] == load_checkpoint(last).meta["extra"]["cpu_hours"]
    for line in lines:
        assert line["cpu_hours"] - line["run_cpu_hours"] == pytest.approx(2.5, abs=1e-12)
        assert 0 < line["run_cpu_hours"] < 1
    fields = set(ddim.training.log.METRICS)  # every line holds the documented fields, no other
    assert all(set(line) == fields for line in lines), lines


# --- class 6: optional work does not stop required work ---------------------------------------


def write_pngs(folder, images):
    folder.mkdir()
    for k, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(folder / f"{k}.png")
    return folder


def test_an_unwritable_cache_folder_warns_and_the_run_goes_on(tmp_path, capsys, cli_train, blobs):
    """--cache-dir below a file (as a read-only folder, it cannot be written, even by root)."""
    data = write_pngs(tmp_path / "pngs", blobs(16))
    (tmp_path / "file").write_text("not a folder")
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="decoded images not cached") as caught:
        code, error = run_cli(capsys, *cli_args(
            cli_train, "--data", data, "--cache-dir", tmp_path / "file" / "decoded",
            "--run-dir", run, "--max-steps", "1", "--sample-every", "0",
        ))  # fmt: skip
    assert code == 0, error
    notes = [str(w.message) for w in caught if "decoded images" in str(w.message)]
    assert len(notes) == 1 and "\n" not in notes[0], notes
    assert steps_of(run) == [1]


def test_an_unwritable_samples_folder_warns_and_the_run_goes_on(tmp_path, blobs, small_config):
    run = tmp_path / "run"
    run.mkdir()
    (run / "samples").write_text("a file where the grids would go")
    config = small_config("training.n_iters=2", "sampling.steps=2")
    with pytest.warns(UserWarning, match="sample grid") as caught:
        last = train(config, run, images=blobs(16), sample_every=1, progress=False)
    assert len([w for w in caught if "sample grid" in str(w.message)]) == 1
    assert load_checkpoint(last).step == 2


def test_an_unwritable_tensorboard_folder_warns_and_the_run_goes_on(
    tmp_path, blobs, small_config, monkeypatch
):
    """A SummaryWriter that cannot make its folder, and one whose writes fail later."""
    read_only = OSError(errno.EROFS, "Read-only file system")

    class Unwritable:
        def __init__(self, folder):
            raise read_only

    class FailsLater:
        def __init__(self, folder):
            self.calls = 0

        def add_scalar(self, *args):
            raise read_only

        def close(self):
            pass

    config = small_config("training.n_iters=3")
    for writer in (Unwritable, FailsLater):
        module = types.ModuleType("torch.utils.tensorboard")
        module.SummaryWriter = writer
        monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
        run = tmp_path / writer.__name__
        with pytest.warns(UserWarning, match="TensorBoard") as caught:
            last = train(config, run, images=blobs(16), log_every=1, **QUIET)
        assert len([w for w in caught if "TensorBoard" in str(w.message)]) == 1
        assert load_checkpoint(last).step == 3 and len(metric_lines(run)) == 3


# --- class 8: a dry run checks what the run checks ----------------------------------------------


def no_work(monkeypatch):
    """Make decoding and training raise if a dry run reaches them."""

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run did work")

    monkeypatch.setattr(cache_module, "_decode_all", refuse)
    monkeypatch.setattr(ddim.training, "train", refuse)
    monkeypatch.setattr(loop_module, "train", refuse)


def test_dry_run_refuses_an_init_the_run_would_refuse(
    tmp_path, capsys, monkeypatch, cli_train, tiny_checkpoint, blobs, write_npz
):
    data = write_npz(tmp_path / "data.npz", blobs(16))
    no_work(monkeypatch)
    common = cli_args(cli_train, "--data", data, "--dry-run", "--runs", tmp_path / "runs")
    code, error = run_cli(capsys, *common, "--init", tiny_checkpoint, "--set", "model.ch=64")
    assert code == 2 and "its network differs from the config's" in error
    code, error = run_cli(capsys, *common, "--init", tmp_path / "none.safetensors")
    assert code == 2 and "none.safetensors" in error
    assert run_cli(capsys, *common, "--init", tiny_checkpoint)[0] == 0  # the same network
    assert not (tmp_path / "runs").exists()


def test_dry_run_refuses_a_missing_dataset_and_a_run_directory_the_run_would_refuse(
    tmp_path, capsys, monkeypatch, cli_train, blobs, write_npz, small_config
):
    data = write_npz(tmp_path / "data.npz", blobs(16))
    code, error = run_cli(capsys, *cli_args(cli_train, "--data", tmp_path / "nowhere",
                                               "--dry-run"))  # fmt: skip
    assert code == 2 and "dataset not found" in error
    run = tmp_path / "run"
    train(small_config("training.n_iters=4", "training.warmup=0",
                       "training.lr_decay_fraction=0.5", f"data.path={data}"), run,
          images=blobs(16), **QUIET)  # fmt: skip
    no_work(monkeypatch)
    before = files_of(run)
    code, error = run_cli(capsys, *cli_args(cli_train, "--data", data, "--run-dir", run,
                                               "--dry-run"))  # fmt: skip
    assert code == 2 and "already holds checkpoints" in error
    resume = ["train", "--resume", run, "--device", "cpu", "--workers", "0", "--dry-run"]
    code, error = run_cli(capsys, *resume, "--set", "training.n_iters=8")
    assert code == 2 and "training.n_iters 8 would" in error
    assert run_cli(capsys, *resume)[0] == 0
    assert files_of(run) == before
