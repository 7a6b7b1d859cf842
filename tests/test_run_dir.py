"""Run directories hold one line of checkpoints: one order (the step) for resuming and pruning, no
branch that overwrites another's checkpoints, metrics whose steps only increase, run options and
counters that survive a resume, and files that cannot be resumed refused in one line."""

import json
import os
import subprocess

import pytest
import torch

import ddim.training.loop as loop_module
from ddim.checkpoint import load_checkpoint
from ddim.errors import DdimError
from ddim.training import latest_checkpoint, train
from ddim.training.run_dir import checkpoint_step, prune_checkpoints, run_checkpoints
from ddim.training.state import save_state, start_state

QUIET = dict(sample_every=0, progress=False)


def steps_of(run):
    return [checkpoint_step(p) for p in run_checkpoints(run)]


def metric_steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pruning_keeps_the_highest_steps_whatever_the_file_times(tmp_path, small_config):
    """A checkpoint written later in time (a copy, a touched file) but of a lower step is pruned
    first, and resume picks the highest step."""
    config = small_config()
    state = start_state(config, torch.device("cpu")).state
    for step in (1, 2, 3, 10, 20):
        state.step = step
        save_state(tmp_path, config, state, cpu_seconds=0, elapsed=0, origin=None, keep=100)
        path = tmp_path / "checkpoints" / f"ckpt-{step:08d}.safetensors"
        newest_first = (100 - step) * 10**9  # file times in the opposite order of the steps
        os.utime(path, ns=(newest_first, newest_first))
    assert latest_checkpoint(tmp_path).name == "ckpt-00000020.safetensors"
    removed = prune_checkpoints(tmp_path, keep=2)
    assert [checkpoint_step(p) for p in removed] == [1, 2, 3]
    assert steps_of(tmp_path) == [10, 20]
    assert len(list((tmp_path / "checkpoints").glob("*.train-*.pt"))) == 2


def test_rolling_back_in_place_is_refused_and_a_branch_gets_its_own_folder(
    tmp_path, blobs, small_config
):
    config = small_config("training.n_iters=6")
    run, branch = tmp_path / "run", tmp_path / "branch"
    train(config, run, images=blobs(16), checkpoint_every=2, keep=10, **QUIET)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    older = run / "checkpoints" / "ckpt-00000002.safetensors"
    with pytest.raises(DdimError, match=r"behind the newest checkpoint .*ckpt-00000006.*--run-dir"):
        train(config, run, images=blobs(16), resume=older, **QUIET)
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    # the branch continues the older checkpoint elsewhere and records where it came from
    last = train(small_config("training.n_iters=8", "training.lr=1e-3"), branch,
                 images=blobs(16), resume=older, checkpoint_every=2, **QUIET)  # fmt: skip
    assert steps_of(branch) == [4, 6, 8] and load_checkpoint(last).step == 8
    record = json.loads((branch / "run.json").read_text())
    assert record["branched_from"] == {"checkpoint": str(older.resolve()), "step": 2}
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    assert latest_checkpoint(run).name == "ckpt-00000006.safetensors"
    assert metric_steps(branch) == sorted(set(metric_steps(branch)))


def test_resuming_the_newest_checkpoint_by_name_is_not_a_rollback(tmp_path, blobs, small_config):
    config = small_config("training.n_iters=4")
    run = tmp_path / "run"
    train(config, run, images=blobs(16), max_steps=2, checkpoint_every=2, **QUIET)
    newest = run / "checkpoints" / "ckpt-00000002.safetensors"
    assert load_checkpoint(train(config, run, images=blobs(16), resume=newest, **QUIET)).step == 4


def test_metrics_stay_increasing_after_a_kill_past_the_last_checkpoint(
    tmp_path, blobs, small_config
):
    config = small_config("training.n_iters=6")
    run = tmp_path / "run"
    train(config, run, images=blobs(16), max_steps=4, checkpoint_every=2, log_every=1, **QUIET)
    # a killed run logged steps 5 and 6 (and half a line) after its last checkpoint at 4
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1}\n{"step": 6, "loss": 1}\n{"step": 7, "lo')
    (run / "checkpoints" / "ckpt-00000004.safetensors").rename(run / "gone.safetensors")
    train(config, run, images=blobs(16), resume=run, **QUIET)  # resumes from step 2
    assert metric_steps(run) == [1, 2, 3, 4, 5, 6]


def test_a_resume_keeps_the_cadence_it_was_started_with(tmp_path, blobs, small_config):
    config = small_config("training.n_iters=12")
    run = tmp_path / "run"
    train(config, run, images=blobs(16), max_steps=3, checkpoint_every=3, keep=2, log_every=1,
          **QUIET)  # fmt: skip
    train(config, run, images=blobs(16), resume=run, max_steps=9, progress=False)
    assert steps_of(run) == [6, 9]  # every 3 steps, 2 kept
    assert metric_steps(run) == list(range(1, 10))  # one line per step
    assert not (run / "samples").exists()  # sample_every 0 was kept too
    # given again, an option changes, and the record says so
    train(config, run, images=blobs(16), resume=run, keep=5, progress=False)
    assert steps_of(run) == [6, 9, 12]
    assert json.loads((run / "run.json").read_text())["options"]["keep"] == 5


def test_images_seen_stay_exact_when_the_batch_changes_on_resume(tmp_path, blobs, small_config):
    run = tmp_path / "run"
    train(small_config("training.n_iters=2"), run, images=blobs(16), log_every=1, **QUIET)
    train(small_config("training.n_iters=5", "training.batch_size=4"), run, images=blobs(16),
          resume=run, **QUIET)  # fmt: skip
    seen = [json.loads(line)["images_seen"] for line in (run / "metrics.jsonl").read_text()
            .splitlines()]  # fmt: skip
    assert seen == [8, 16, 20, 24, 28]
    last = load_checkpoint(latest_checkpoint(run))
    assert last.meta["extra"]["images_seen"] == 28 and last.load_train_state()["images"] == 28


def test_a_time_budget_stops_the_run_and_decays_the_rate_over_its_last_share(
    tmp_path, blobs, small_config, monkeypatch
):
    """With a clock that advances one second per reading, a 40-second budget ends the run well
    before n_iters, with a checkpoint; the rate was flat, then fell towards 0."""
    clock = iter(range(10**6))
    monkeypatch.setattr(loop_module.time, "perf_counter", lambda: float(next(clock)))
    config = small_config("training.n_iters=100000", "training.warmup=0", "training.lr=1e-3",
                          "training.lr_decay_fraction=0.5")  # fmt: skip
    run = tmp_path / "run"
    last = train(config, run, images=blobs(16), time_budget=40, log_every=1, **QUIET)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [line["lr"] for line in lines]
    assert 3 < len(lines) < 40 and load_checkpoint(last).step == len(lines)
    assert rates[0] == 1e-3 and 0 <= rates[-1] < 0.2e-3
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    state = load_checkpoint(last).load_train_state()
    assert state["elapsed_seconds"] >= 40
    # resumed, the spent budget trains nothing more and returns the checkpoint it resumed
    assert train(config, run, images=blobs(16), resume=run, **QUIET) == last


def test_a_time_budget_run_shows_the_budget_on_its_bar(tmp_path, blobs, small_config,
                                                       monkeypatch, capsys):  # fmt: skip
    """The bar of a run with a time budget counts the budget's seconds (its ETA is when the run
    stops, not when n_iters would be reached) and shows the step beside the loss."""
    clock = iter(range(10**6))
    monkeypatch.setattr(loop_module.time, "perf_counter", lambda: float(next(clock)))
    config = small_config("training.n_iters=100000")
    train(config, tmp_path / "run", images=blobs(16), time_budget=30, log_every=1,
          sample_every=0, progress=True)  # fmt: skip
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("100%|") and "of the time budget" in bar, bar
    assert "step=" in bar and "100000" not in bar, bar


def test_files_without_our_training_state_are_refused_for_resume_in_one_line(
    tmp_path, cli_train, tiny_checkpoint
):
    state = load_checkpoint(tiny_checkpoint).model_state
    torch.save([state, {}, 1, 10, state], tmp_path / "ckpt.pth")
    for source in (tmp_path / "ckpt.pth", tiny_checkpoint):  # official; ours without a state
        result = subprocess.run(cli_train("--resume", str(source)), capture_output=True,
                                text=True)  # fmt: skip
        lines = result.stderr.strip().splitlines()
        errors = [line for line in lines if ": error: " in line]
        assert result.returncode == 2 and errors == lines[-1:], result.stderr
        assert "cannot be resumed" in lines[-1] and "--init" in lines[-1]
    missing = subprocess.run(cli_train("--resume", str(tmp_path / "nothing")),
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 2 and "nothing to resume" in missing.stderr


def test_the_options_in_force_at_a_step_undo_the_later_changes():
    """A branch from an older checkpoint takes the options its run had at that step."""
    from ddim.training.run_dir import options_in_force

    record = {"options": {"keep": 5, "amp": True, "checkpoint_every": 4},
              "changes": [{"step": 3, "setting": "keep", "recorded": 2, "given": 4},
                          {"step": 6, "setting": "keep", "recorded": 4, "given": 5},
                          {"step": 6, "setting": "amp", "recorded": False, "given": True},
                          {"step": 6, "setting": "training.lr", "recorded": 1, "given": 2}]}
    assert options_in_force(record, 6) == record["options"]
    assert options_in_force(record, 5) == {"keep": 4, "amp": False, "checkpoint_every": 4}
    assert options_in_force(record, 2) == {"keep": 2, "amp": False, "checkpoint_every": 4}
    assert options_in_force({}, 2) == {}
