"""lab/gpu/run.py and run.sh: the plan's decision, the sample sets and what fits of them in the
returned files, the bench stage's faster paths, and the whole run at smoke size on the CPU, every
stage, its returned files unpacked by lab/gpu/unpack.py."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lab.gpu import handback, rules, run

ROOT = Path(__file__).resolve().parents[3]
HARNESS = ROOT / "lab" / "gpu"
MIB = 2**20


# --- the plan and the sample sets --------------------------------------------------------------


def test_the_plan_falls_back_to_the_shipped_width_eager_when_nothing_was_measured():
    decision = run.decide({}, 300.0, run.GPU)
    assert (decision["width"], decision["batch"], decision["compile"]) == (64, 512, False)
    assert decision["images_per_s"] is None and "not measured" in decision["width_reason"]


def test_the_plan_compiles_when_the_measured_rates_say_it_pays():
    eager = [{"width": 64, "batch": 512, "images_per_s": 10_000.0}]
    measured = {"width": 64, "batch": 512, "eager": eager,
                "compiled": {"images_per_s": 15_000.0, "compile_seconds": 60.0}}  # fmt: skip
    decision = run.decide(measured, 300.0, run.GPU)
    assert decision["compile"] and decision["images_per_s"] == 15_000.0
    assert decision["projected_images"] == 15_000.0 * 300
    assert not run.decide(measured, 100.0, run.GPU)["compile"]  # 40 s left to train compiled
    del measured["compiled"]  # the compilation was stopped: eager
    assert not run.decide(measured, 300.0, run.GPU)["compile"]


def test_at_gpu_size_two_table_sets_fit_beside_the_weights_and_the_main_set():
    from ddim.checkpoint import bundled_checkpoint

    weights = bundled_checkpoint().stat().st_size  # the float16 file of the same network
    main = run.npz_bytes(10_000)
    files = rules.parts_of(weights) + rules.parts_of(main)
    assert files == 4
    assert rules.sets_that_fit(files, weights + main, run.npz_bytes(2_000)) == 2
    assert rules.sets_that_fit(8, 0, 1) == 0 and rules.sets_that_fit(0, 0, 70 * MIB) == 0


def test_sample_sets_start_with_the_main_set_then_the_costliest_table_cells():
    names = [name for name, _, _ in run.sample_sets(run.GPU)]
    assert names[:3] == ["S50-eta0-n10000", "S50-eta1-n2000", "S50-sigmahat-n2000"]
    assert len(names) == 9 and names[-2:] == ["S20-eta0-n2000", "S10-eta0-n2000"]
    options = dict((name, opts) for name, _, opts in run.sample_sets(run.GPU))
    assert options["S10-sigmahat-n2000"] == ["--steps", "10", "--sampler", "ddpm", "--variance",
                                             "large"]  # fmt: skip
    assert options["S20-eta1-n2000"] == ["--steps", "20", "--eta", "1"]


# --- the bench stage's faster paths -------------------------------------------------------------


class FakeRun:
    """What the bench stage's faster paths use of a Run; `child` records each command, writes its
    rows, and fails the compiled runs named in `stopped` as a stage limit would."""

    def __init__(self, records: Path, stopped=()):
        self.sizes, self.records, self.facts = run.GPU, records, {}
        self.commands, self.stopped = [], stopped

    def child(self, command, log, timeout):
        self.commands.append((log, command))
        (self.records / log).write_text("log\n")
        if any(name in log for name in self.stopped):
            return {"rc": -15, "stopped": True}
        out = Path(command[command.index("-o") + 1])
        paths = command[command.index("--paths") + 1:command.index("--cudnn-benchmark")]
        rows = [{"path": p, "images_per_s": 100.0 + i} for i, p in enumerate(paths)]
        out.write_text(json.dumps({"results": rows}))
        return {"rc": 0, "stopped": False}

    def say(self, text):
        pass

    def tail(self, log, lines=12):
        return ""


def test_faster_paths_run_each_compilation_apart_so_one_stopped_loses_only_its_rows(tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setattr(run, "fast_paths", lambda: ["default", "pure bf16"])
    fake = FakeRun(tmp_path, stopped=("pure-bf16",))
    note = run._bench_faster(fake, timeout=600)
    assert [log for log, _ in fake.commands] == [
        "bench-fast.log", "bench-compiled-pure-bf16.log", "bench-compiled-default.log"]
    eager, *compiled = [command for _, command in fake.commands]
    assert "--compile" not in eager and all("--compile" in c for c in compiled)
    assert "--profile" in eager  # the kernels' time by kind, measured only on the eager paths
    assert eager[eager.index("--paths") + 1:][:2] == ["default", "pure bf16"]
    assert "bench-compiled-pure-bf16: exit -15 (stopped at the stage limit)" in note
    assert set(fake.facts) == {"bench-fast", "bench-compiled-default"}
    assert (tmp_path / "bench-compiled-default.json").is_file()
    # no time left: nothing is started, and the note says so
    late = FakeRun(tmp_path)
    assert "no time left" in run._bench_faster(late, timeout=run.FAST_BENCH_LEAST_S - 1)
    assert late.commands == []


# --- the whole run, at smoke size ----------------------------------------------------------------


def jpeg_archive(path: Path, n: int = 16) -> Path:
    """A .tar.xz laid out as cifar10-train.tar.xz: train/<class>/NNNN.jpg, 32×32 JPEGs."""
    rng = np.random.default_rng(0)
    folder = path.parent / "jpegs"
    for k in range(n):
        image = (rng.uniform(0, 60, (32, 32, 3)) + rng.uniform(0, 190, 3)).astype(np.uint8)
        target = folder / "train" / ("cat", "dog")[k % 2] / f"{k:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target, quality=75)
    with tarfile.open(path, "w:xz") as archive:
        archive.add(folder / "train", arcname="train")
    return path


def test_the_smoke_run_passes_every_stage_and_hands_back_files_that_unpack(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    data = jpeg_archive(tmp_path / "train.tar.xz")
    command = ["bash", str(HARNESS / "run.sh"), str(out), "--smoke", "--data", str(data),
               "--wheels", str(tmp_path / "no-wheels"), "--work", str(work)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**_env(), "PYTHON":
                                                                          sys.executable})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.splitlines()[2].split("] ", 1)[1].startswith("python ")
    stages = json.loads((work / "records" / "stages.json").read_text())
    assert [s["stage"] for s in stages] == [name for name, _ in run.STAGES]
    assert all(s["status"] == "ok" for s in stages), stages

    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= rules.MAX_FILES and "manifest.json" in files and "records.tar.gz" in files
    assert all(handback.NAME.match(f) for f in files)
    assert all((out / f).stat().st_size <= rules.PART_BYTES for f in files)
    assert sum((out / f).stat().st_size for f in files) <= rules.MAX_TOTAL_BYTES
    assert {"ema-fp16.safetensors.00", "ema-fp16.safetensors.01", "S5-eta0-n4.npz"} <= set(files)
    manifest = json.loads((out / "manifest.json").read_text())
    names = [entry["name"] for entry in manifest["files"]]
    parts = [part["file"] for entry in manifest["files"] for part in entry["parts"]]
    assert len(set(names)) == len(names) and sorted(parts + ["manifest.json"]) == files
    # every set the smoke run samples fits: the weights, the main set, three table cells
    assert names[:2] == ["ema-fp16.safetensors", "S5-eta0-n4.npz"] and len(names) == 6
    assert "did not fit" not in result.stdout

    unpacked = tmp_path / "unpacked"
    check = subprocess.run([sys.executable, "-m", "lab.gpu.unpack", str(out), str(unpacked)],
                           capture_output=True, text=True, env=_env(), cwd=ROOT)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    from ddim.checkpoint import bundled_checkpoint, load_checkpoint

    weights = load_checkpoint(unpacked / "ema-fp16.safetensors")
    assert weights.model_config.ch == 64 and weights.meta["extra"]["float16"]
    with np.load(unpacked / "S5-eta0-n4.npz") as samples:
        assert samples["arr_0"].shape == (4, 32, 32, 3)
    records = unpacked / "records"
    init = json.loads((records / "run" / "init.json").read_text())
    assert init["images_seen"] == load_checkpoint(bundled_checkpoint()).images_seen
    assert (records / "bench.json").is_file() and (records / "plan.json").is_file()
    # the default path, and pure bf16 where bf16 is native
    fast = json.loads((records / "bench-fast.json").read_text())["results"]
    expected = [f"{default_sampling_path()} (default)"] + ["pure bf16"] * native_bf16_cpu()
    assert [r["path"] for r in fast] == [f"{p} (cudnn.benchmark: not CUDA)" for p in expected]
    assert all(r["profile"]["by_kind"] for r in fast)
    assert "collected" in (records / "cuda-tests.log").read_text()


def test_without_the_archive_the_environment_stage_says_which_argument_names_it(tmp_path):
    for data in (None, tmp_path / "absent.tar.xz"):
        state = run.Run(tmp_path / "out", tmp_path / "work", run.SMOKE, data, tmp_path, True)
        with pytest.raises(run.StageFailed, match="as --data PATH or in DDIM_CIFAR10_TAR"):
            run.decode_training_images(state)
        state.log_file.close()


def native_bf16_cpu() -> bool:
    import torch

    from ddim.device import native_bf16

    return native_bf16(torch.device("cpu"))


def default_sampling_path() -> str:
    import torch

    from ddim.experiments.bench import sampling_paths

    names = list(sampling_paths(torch.device("cpu"), only=["default"]))
    return names[0].removesuffix(" (default)")


def _env():
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def test_a_run_can_skip_the_measuring_stages_and_train_with_the_defaults(tmp_path):
    """A later GPU window that only trains: the skipped stages are recorded as such, the run
    still exits 0, and training uses the shipped width and the config's batch."""
    out, work = tmp_path / "out", tmp_path / "work"
    data = jpeg_archive(tmp_path / "train.tar.xz")
    command = ["bash", str(HARNESS / "run.sh"), str(out), "--smoke", "--data", str(data),
               "--wheels", str(tmp_path / "no-wheels"), "--work", str(work),
               "--skip", "cuda-tests", "bench", "plan"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**_env(), "PYTHON":
                                                                          sys.executable})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    stages = {s["stage"]: s["status"] for s in
              json.loads((work / "records" / "stages.json").read_text())}  # fmt: skip
    assert stages == {"environment": "ok", "cuda-tests": "skipped", "bench": "skipped",
                      "plan": "skipped", "train": "ok", "sample": "ok", "pack": "ok"}
    assert "s: ch 64, batch 2, eager" in result.stdout  # "training for N s: ..." (the defaults)
    bad = subprocess.run(["bash", str(HARNESS / "run.sh"), str(tmp_path / "o2"),
                          "--skip", "train"], capture_output=True, text=True, env=_env())
    assert bad.returncode == 2 and "invalid choice: 'train'" in bad.stderr


def test_a_warm_start_that_diverged_says_so_in_the_training_note(tmp_path, monkeypatch):
    """The H100 run whose loss went from 0.086 to 5.3 and back: the note names it."""
    import ddim.training

    folder = tmp_path / "run"
    folder.mkdir()
    monkeypatch.setattr(ddim.training, "latest_checkpoint", lambda path: folder / "ckpt-250")
    losses = [0.086, 5.26, 5.45, 0.3, 0.088]
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"step": 50 * (k + 1), "loss": loss, "images_seen": 51_200 * (k + 1),
                    "images_per_s": 5000.0}) + "\n" for k, loss in enumerate(losses)))
    state = run.Run(tmp_path / "out", tmp_path / "work", run.SMOKE, tmp_path, tmp_path, True)
    note = run._training_outcome(state, {"rc": 0, "stopped": False}, folder)
    assert note is not None and "DIVERGED: loss 0.0860 first, 5.4500 at its peak" in note
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 50, "loss": 0.09, "images_seen": 1,
                                                      "images_per_s": 1.0}) + "\n")
    assert "DIVERGED" not in run._training_outcome(state, {"rc": 0, "stopped": False}, folder)
