"""Train and evaluate the CIFAR-10 model on one GPU in one command of a few minutes.

From the repository's root (lab/gpu/README.md says more):

    bash lab/gpu/run.sh OUT_DIR --data TAR_XZ            # 9 minutes on one H100 (--minutes M)
    bash lab/gpu/run.sh OUT_DIR --data TAR_XZ --smoke    # every stage at tiny size, on the CPU

TAR_XZ is the CIFAR-10 training JPEG archive (`cifar10-train.tar.xz`, the 50,000 training JPEGs
under train/<class>/); --data names it, or the environment variable DDIM_CIFAR10_TAR. For the
diffusers column of the benchmark on a machine without diffusers, put its wheel in `.whl/`
(`pip download --no-deps --only-binary=:all: diffusers==0.42.1 -d .whl`); the run installs it
into a temporary folder, and skips that column with a note where it cannot import.

Stages, top to bottom; each is recorded, and a stage that fails does not stop the run:

  environment  what the run relies on (python, torch, the GPU and its free memory, diffusers);
               the training images unpacked and decoded once into a uint8 .npz
  cuda-tests   python -m pytest -m cuda tests/test_cuda.py (CUDA against the CPU)
  bench        ddim bench: the CIFAR-10 config (35.7M), DDIM S = 50, batch 500: every precision
               path (the default among them), fp32 eager, and diffusers' DDIM loop; then, in
               the stage's time left, bf16 and pure bf16 with cudnn.benchmark, eager and compiled
  plan         training images/s of each width and batch, eager and compiled, for a few seconds
               each; the rules of lab/gpu/rules.py choose width, batch and compile
  train        ddim train --config cifar10-gpu --init bundled, for the time that is left
  sample       the EMA weights as a float16 file; 10,000 DDIM S = 50 η = 0 samples (seeds 0–9,999),
               then Table 1's sets (S ∈ {10, 20, 50} × η = 1, σ̂, η = 0) of 2,000 as fit
  pack         OUT_DIR, within the harness's limits (at most 8 files under 16 MiB): weights and
               samples split into parts, records.tar.gz (logs, bench and plan JSON, the run's
               records and metrics), and manifest.json (SHA-256 of every original and part);
               lab/gpu/unpack.py joins them

The run ends by its deadline (`--minutes` after it starts): the training time is what the stages
before it left, less what sampling and packing need.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lab.gpu import handback, rules

ROOT = Path(__file__).resolve().parents[2]  # the repository's root
DATA_VARIABLE = "DDIM_CIFAR10_TAR"  # the environment variable that may name --data

WARM_WIDTH = 64  # the width of the shipped model, the only one that can start from its weights
TRAIN_CONFIG = "cifar10-gpu"
PEAK_BF16_TFLOPS = {"H100 80GB HBM3": 989.0, "H200": 989.0}  # dense, for '% of peak'


@dataclass(frozen=True)
class Sizes:
    """How big each stage is; the GPU run and the smoke run differ only here."""

    minutes: float = 9.0  # the whole run, from its first line to the last file written
    bench_config: str = "cifar10"  # the network of the sampling benchmark (35.7M parameters)
    bench_batch: int = 500
    bench_steps: int = 50
    widths: tuple[int, ...] = (64, 96)
    batches: tuple[int, ...] = (256, 512, 1024)  # measured at the width of the shipped model
    batch: int = 512  # the batch widths are compared at
    measure_seconds: float = 2.0
    bench_compile: bool = True  # time the default sampling path compiled (in the bench stage)
    # compiling the whole network's training step did not finish inside the plan's 100 s on an
    # H100 (torch 2.11), nor did the compiled-training test inside the test stage's; compiled
    # block by block (compile_blocks) the CPU's benchmark of it took 417 s instead of 579, so the
    # plan measures it again, after the eager rates (the test stays off)
    measure_compile: bool = True
    cuda_tests: str = "not compiled_bf16_training"  # pytest -k of the cuda-tests stage
    target_images: float = 2.5e6
    max_steps: int | None = None
    steps: tuple[int, ...] = (10, 20, 50)  # Table 1's columns; the main set uses the largest
    main_n: int = 10_000
    set_n: int = 2_000
    sample_batch: int = 1000
    decode_workers: int = 16


GPU = Sizes()
SMOKE = Sizes(minutes=10.0, bench_config="tiny", bench_batch=2, bench_steps=2, batches=(2, 4),
              batch=2, measure_seconds=0.1, measure_compile=False, bench_compile=False,
              target_images=1e3, max_steps=2, steps=(2, 3, 5), main_n=4, set_n=2, sample_batch=4,
              decode_workers=0)  # fmt: skip

# Seconds each part of a 9-minute run may take; a run of M minutes scales them by M / 9.
# On an H100: the tests took 70 s before the compiled-training one, the eager measurements about
# 35 s (the plan's other 65 s are for compiling the step), and 10,000 samples at S = 50 about
# 40 s after a 15 s start (two sets of 2,000 add 15 s); the bench of every path 66 s (before the
# two pure-bf16 paths, a few seconds each), which leaves the faster paths about 100 s: both
# eagerly, then as many compilations as fit.
ALLOWED = {"cuda-tests": 80, "bench": 180, "plan": 100, "train-startup": 15, "least-training": 30,
           "after-training": 100, "pack": 5}  # fmt: skip
FAST_BENCH_LEAST_S = 20  # the faster paths need at least this much of the bench stage
STOP_GRACE_S = 30  # after SIGTERM (the trainer writes a checkpoint), before SIGKILL
NPZ_HEADER_BYTES = 1024  # an .npz's zip and array headers, at most


def sample_sets(sizes: Sizes) -> list[tuple[str, int, list[str]]]:
    """(name, N, `ddim sample` options) of each sample set, in order of priority: the main set
    (DDIM, η = 0, the largest S), then Table 1's cells, η = 1 and σ̂ from the largest S down (the
    costliest to make later on a CPU), then DDIM at the smaller S."""
    steps = sorted(sizes.steps, reverse=True)
    rows = {"eta0": ["--eta", "0"], "eta1": ["--eta", "1"],
            "sigmahat": ["--sampler", "ddpm", "--variance", "large"]}  # fmt: skip
    cells = [(steps[0], "eta0", sizes.main_n)]
    cells += [(S, row, sizes.set_n) for S in steps for row in ("eta1", "sigmahat")]
    cells += [(S, "eta0", sizes.set_n) for S in steps[1:]]
    return [(f"S{S}-{row}-n{n}", n, ["--steps", str(S), *rows[row]]) for S, row, n in cells]


def npz_bytes(n: int, image_bytes: int = 3 * 32 * 32) -> int:
    """Size of an .npz of n uint8 32×32 RGB images, at most."""
    return n * image_bytes + NPZ_HEADER_BYTES


# --- the run ------------------------------------------------------------------------------------


class Run:
    """One run: its folders, its log, its deadline, the children it starts and what it records."""

    def __init__(self, out: Path, work: Path, sizes: Sizes, data: Path | None, wheels: Path,
                 smoke: bool):  # fmt: skip
        self.out, self.work, self.sizes, self.data, self.wheels = out, work, sizes, data, wheels
        self.start = time.monotonic()
        self.deadline = self.start + 60 * sizes.minutes
        self.records = work / "records"
        self.records.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.records / "run.log", "a", encoding="utf-8")
        self.stages: list[dict] = []
        self.facts: dict = {"sizes": asdict(sizes), "smoke": smoke}
        self.returned: list[dict] = []  # manifest entries of the weights and samples in `out`
        self.handled: dict[str, str] = {}  # file name -> handed back / did not fit
        self.env = self._child_environment()
        self.process: subprocess.Popen | None = None

    def allowed(self, part: str) -> float:
        """Seconds `part` may take at this run's length."""
        return ALLOWED[part] * self.sizes.minutes / 9.0

    def files_used(self) -> int:
        """Files of weights and samples in OUT_DIR."""
        return sum(len(entry["parts"]) for entry in self.returned)

    def bytes_used(self) -> int:
        """Bytes of weights and samples in OUT_DIR."""
        return sum(entry["bytes"] for entry in self.returned)

    def left(self) -> float:
        """Seconds until the deadline."""
        return self.deadline - time.monotonic()

    def say(self, text: str) -> None:
        """Print a line and keep it in run.log."""
        stamp = f"[{time.monotonic() - self.start:6.1f}s] "
        for line in text.splitlines() or [""]:
            print(stamp + line, flush=True)
            self.log_file.write(stamp + line + "\n")
        self.log_file.flush()

    def _child_environment(self) -> dict:
        """The environment of every child: the tree's src/ (and installed wheels) on the path."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        paths = [str(self.work / "site"), str(ROOT / "src"), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return env

    def child(self, command: list[str], log: str, timeout: float, poll=None) -> dict:
        """Run `command` in its own process group, its output into records/`log`, calling
        `poll()` about once a second while it runs; past `timeout` seconds send it SIGTERM (the
        trainer then writes a checkpoint) and SIGKILL STOP_GRACE_S later. Returns the exit code,
        the seconds and whether it was stopped."""
        began = time.monotonic()
        end = began + max(1.0, timeout)
        with open(self.records / log, "w", encoding="utf-8") as f:
            f.write("$ " + " ".join(command) + "\n")
            f.flush()
            self.process = subprocess.Popen(
                command, stdout=f, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                preexec_fn=os.setpgrp,  # its own process group, stopped as one
            )  # fmt: skip
            rc, stopped = None, False
            while rc is None:
                try:
                    rc = self.process.wait(timeout=max(0.01, min(1.0, end - time.monotonic())))
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= end:
                        stopped, rc = True, self.stop_child()
                if poll is not None:
                    poll()
            self.process = None
        return {"rc": rc, "seconds": time.monotonic() - began, "stopped": stopped}

    def stop_child(self) -> int:
        """SIGTERM the running child's process group, SIGKILL it if it is still there later."""
        child = self.process
        try:
            os.killpg(child.pid, signal.SIGTERM)
            return child.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            return child.wait()
        except ProcessLookupError:
            return child.wait()

    def tail(self, log: str, lines: int = 12) -> str:
        """The last lines of a child's log."""
        text = (self.records / log).read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])

    def stage(self, name: str, fn) -> object:
        """Run one stage: time it, record ok / failed (with the error) and publish the records."""
        self.say(f"== {name} ({self.left():.0f} s left)")
        began = time.monotonic()
        record = {"stage": name, "status": "ok", "note": ""}
        result = None
        try:
            result = fn()
            if isinstance(result, str):
                record["note"] = result
        except StageFailed as error:
            record.update(status="failed", note=str(error))
        except Exception as error:  # the run goes on with what it has
            record.update(status="failed", note=f"{type(error).__name__}: {error}")
            self.say(traceback.format_exc().rstrip())
        record["seconds"] = round(time.monotonic() - began, 1)
        self.stages.append(record)
        self.say(f"== {name}: {record['status']} in {record['seconds']} s"
                 + (f" — {record['note']}" if record["note"] else ""))
        self.publish()
        return result

    def publish(self) -> None:
        """Write records.tar.gz and manifest.json into OUT_DIR (after every stage, so that a run
        stopped from outside still hands back its records); a failure here is logged only."""
        try:
            self._publish()
        except Exception:
            self.say("could not publish the records:\n" + traceback.format_exc().rstrip())

    def _publish(self) -> None:
        _write_json(self.records / "stages.json", self.stages)
        _write_json(self.records / "facts.json", self.facts)
        handback.pack_tree(self.records, self.work / "records.tar.gz", "records")
        entry = handback.split_file(self.work / "records.tar.gz", self.out, "records.tar.gz")
        entry["kind"] = "records"
        run = {"sizes": asdict(self.sizes), "stages": self.stages,
               "seconds": round(time.monotonic() - self.start, 1)}  # fmt: skip
        handback.write_manifest(self.out, [*self.returned, entry], run)


class StageFailed(RuntimeError):
    """A stage's expected way of failing: recorded with its message, without a traceback."""


def _write_json(path: Path, value) -> None:
    """Write `value` as JSON through a temporary name (another process may be reading it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --- stage: environment --------------------------------------------------------------------------


def environment(run: Run) -> str:
    """What the run relies on, in its first lines; the wheels installed; the images decoded."""
    run.say(f"python {sys.version.split()[0]} ({sys.executable}), {os.cpu_count()} CPUs, "
            f"{platform.platform()}")
    run.facts["environment"] = {"python": sys.version.split()[0], "executable": sys.executable,
                                "cpus": os.cpu_count(), "platform": platform.platform()}
    install_wheels(run)
    probe(run)
    return decode_training_images(run)


PROBE = """
import json, torch
facts = {"torch": torch.__version__, "cuda_build": torch.version.cuda,
         "cuda": torch.cuda.is_available(), "device": "cpu"}
if facts["cuda"]:
    free, total = torch.cuda.mem_get_info()
    facts.update(device=torch.cuda.get_device_name(),
                 capability=list(torch.cuda.get_device_capability()),
                 memory_free_gib=free / 2**30, memory_total_gib=total / 2**30)
try:
    import diffusers
    facts["diffusers"] = f"{diffusers.__version__} ({diffusers.__file__})"
except Exception as error:
    facts["diffusers"], facts["diffusers_error"] = None, f"{type(error).__name__}: {error}"
print(json.dumps(facts))
"""


def probe(run: Run) -> None:
    """torch, the GPU and its free memory, and whether diffusers imports, as the children see
    them (the run's own process never touches the GPU)."""
    result = run.child([sys.executable, "-c", PROBE], "probe.log", timeout=120)
    if result["rc"] != 0:
        raise StageFailed(f"python cannot import torch: {run.tail('probe.log', 1)}")
    facts = json.loads(run.tail("probe.log", 1))
    run.facts["environment"] |= facts
    run.facts["diffusers"] = facts["diffusers"]
    run.say(f"torch {facts['torch']}, built for CUDA {facts['cuda_build']}")
    if facts["cuda"]:
        run.say(f"GPU: {facts['device']}, {facts['memory_free_gib']:.1f} GiB free of "
                f"{facts['memory_total_gib']:.1f} GiB")
    else:
        run.say("GPU: none (CUDA is not available): the CUDA tests skip, all runs on the CPU")
    run.say(f"diffusers: {facts['diffusers']}" if facts["diffusers"] else
            f"diffusers: not importable ({facts['diffusers_error']}); the bench skips its column")


def install_wheels(run: Run) -> None:
    """pip-install the wheels of `run.wheels` (no index, no dependencies) into work/site."""
    wheels = sorted(run.wheels.glob("*.whl")) if run.wheels.is_dir() else []
    run.facts["wheels"] = [w.name for w in wheels]
    if not wheels:
        run.say(f"wheels: none in {run.wheels}")
        return
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
               "--no-compile", "--no-cache-dir", "--upgrade", "--target",
               str(run.work / "site"), *map(str, wheels)]  # fmt: skip
    result = run.child(command, "pip.log", timeout=120)
    run.say(f"wheels: {', '.join(w.name for w in wheels)} -> "
            f"{'installed' if result['rc'] == 0 else 'not installed: ' + run.tail('pip.log', 3)}")


def decode_training_images(run: Run) -> str:
    """Unpack the .tar.xz of training JPEGs and decode it once into work/train.npz (uint8)."""
    from ddim.data import load_all, open_dataset
    from ddim.images import save_npz

    wanted = (f"pass the CIFAR-10 training JPEG archive (cifar10-train.tar.xz) as --data PATH "
              f"or in {DATA_VARIABLE}")
    if run.data is None:
        raise StageFailed(f"no training images: {wanted}")
    if not run.data.is_file():
        raise StageFailed(f"{run.data} is missing: {wanted}")
    began = time.monotonic()
    folder = run.work / "data"
    with tarfile.open(run.data) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(folder, filter="data")
        else:  # Python before 3.10.12 / 3.11.4: refuse members that leave the folder
            _check_members(archive)
            archive.extractall(folder)
    roots = [p.parent for p in [folder / "train", *folder.glob("*/train")] if p.is_dir()]
    if not roots:
        raise StageFailed(f"{run.data} holds no train/ folder")
    root = roots[0]
    dataset = open_dataset(root, subdir="train", resolution=32, progress=False)
    workers = min(run.sizes.decode_workers, os.cpu_count() or 1)
    images = load_all(dataset, workers=workers, progress=False)
    save_npz(images, run.work / "train.npz")
    run.facts["data"] = {"archive": str(run.data), "images": len(images),
                         "sha256": handback.sha256_file(run.data)}  # fmt: skip
    return f"{len(images):,} training images decoded in {time.monotonic() - began:.1f} s"


def _check_members(archive: tarfile.TarFile) -> None:
    for member in archive.getmembers():
        if member.name.startswith(("/", "..")) or "/../" in member.name or not (
            member.isfile() or member.isdir()
        ):
            raise ValueError(f"{member.name}: not a plain file inside the archive")


# --- stage: CUDA tests ---------------------------------------------------------------------------


def cuda_tests(run: Run) -> str:
    """pytest -m cuda tests/test_cuda.py; the run goes on whatever it finds."""
    xml = run.records / "cuda-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-o",
               "addopts=", "-v", "-rA", "-p", "no:cacheprovider", f"--junitxml={xml}"]  # fmt: skip
    if run.sizes.cuda_tests:
        command += ["-k", run.sizes.cuda_tests]
    result = run.child(command, "cuda-tests.log", timeout=run.allowed("cuda-tests"))
    counts = _junit_counts(xml)
    run.facts["cuda_tests"] = {**result, **counts}
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    run.say(run.tail("cuda-tests.log", 20))
    if result["rc"] not in (0, 5) or result["stopped"]:
        raise StageFailed(f"pytest exit {result['rc']}{' (stopped)' if result['stopped'] else ''}"
                          f": {summary}")
    return summary


def _junit_counts(xml: Path) -> dict:
    """tests, failures, errors and skipped of a JUnit XML report (empty when there is none)."""
    import xml.etree.ElementTree as ElementTree

    if not xml.is_file():
        return {}
    suite = ElementTree.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


# --- stage: sampling throughput ------------------------------------------------------------------


def _bench_command(s: Sizes, out: Path) -> list[str]:
    return [sys.executable, "-m", "ddim", "bench", "--config", s.bench_config, "--what", "sample",
            "--batch", str(s.bench_batch), "--steps", str(s.bench_steps), "--repeats", "1",
            "-o", str(out)]  # fmt: skip


def bench(run: Run) -> str:
    """ddim bench on the CIFAR-10 config: every sampling path and diffusers' loop; then, in the
    stage's time left, the default path with cuDNN's algorithm search and compiled."""
    s = run.sizes
    began = time.monotonic()
    out = run.records / "bench.json"
    command = _bench_command(s, out)
    peak = _peak_tflops(run.facts.get("environment", {}).get("device", ""))
    if peak:
        command += ["--peak-tflops", str(peak)]
    if not run.facts.get("diffusers"):
        command.append("--no-diffusers")
    result = run.child(command, "bench.log", timeout=run.allowed("bench"))
    run.say(run.tail("bench.log", 14))
    if result["rc"] != 0:
        raise StageFailed(f"ddim bench exit {result['rc']}"
                          f"{' (stopped at its time limit)' if result['stopped'] else ''}")
    rows = json.loads(out.read_text())["results"]
    run.facts["bench"] = rows
    best = {r["path"]: r["images_per_s"] for r in rows}
    default = next((v for k, v in best.items() if "(default)" in k), None)
    theirs = next((v for k, v in best.items() if k.startswith("diffusers")), None)
    note = f"default path {default:,.1f} img/s" if default else ""
    if default and theirs:
        note += f", diffusers {theirs:,.1f} img/s ({default / theirs:.2f}x)"
    left = run.allowed("bench") - (time.monotonic() - began)
    if left < FAST_BENCH_LEAST_S:
        return note + f"; no time left for the faster paths ({left:.0f} s)"
    return note + "; " + _bench_faster(run, left)


def fast_paths() -> list[str]:
    """The sampling paths of the faster-paths bench: the default, and the network cast to bf16
    (pure bf16) where `ddim bench` has that path on the device it picks."""
    import torch

    from ddim.experiments.bench import sampling_paths

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return ["default"] + [name for name in ("pure bf16",) if name in sampling_paths(device)]


def _bench_faster(run: Run, timeout: float) -> str:
    """The sampling-speed candidates not yet timed on a GPU, each in its own child (a
    compilation stopped by the stage's limit loses only its own rows): the default path and
    pure bf16 with cuDNN's algorithm search (records/bench-fast.json, with a profile of one
    network call of each: where the time goes, by kind of kernel), then each compiled
    (bench-compiled-*.json), pure bf16 first, as long as the stage has time."""
    began = time.monotonic()
    paths = fast_paths()
    runs = [("bench-fast", paths, False)]
    if run.sizes.bench_compile:
        runs += [(f"bench-compiled-{p.replace(' ', '-')}", [p], True) for p in reversed(paths)]
    notes = []
    for name, chosen, compile in runs:
        left = timeout - (time.monotonic() - began)
        if left < FAST_BENCH_LEAST_S:
            notes.append(f"{name}: no time left ({left:.0f} s)")
            break
        out = run.records / f"{name}.json"
        command = [*_bench_command(run.sizes, out), "--paths", *chosen, "--cudnn-benchmark",
                   "--no-diffusers", *(["--compile"] if compile else ["--profile"])]  # fmt: skip
        result = run.child(command, f"{name}.log", timeout=left)
        run.say(run.tail(f"{name}.log", 6))
        if result["rc"] != 0:
            notes.append(f"{name}: exit {result['rc']}"
                         f"{' (stopped at the stage limit)' if result['stopped'] else ''}")
            continue
        rows = json.loads(out.read_text())["results"]
        run.facts[name] = rows
        notes.append(", ".join(f"{r['path']} {r['images_per_s']:,.1f} img/s" for r in rows))
    return "; ".join(notes)


def _peak_tflops(device: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device), None)


# --- stage: plan ---------------------------------------------------------------------------------


def plan(run: Run) -> str:
    """Measure training images/s of the widths and batches (and compiled), then decide."""
    s = run.sizes
    out = run.records / "measure.json"
    estimate = _training_seconds(run, run.allowed("plan"))
    command = [sys.executable, "-m", "lab.gpu.run", "_measure", "--out", str(out),
               "--config", TRAIN_CONFIG, "--widths", *map(str, s.widths), "--batches",
               *map(str, s.batches), "--batch", str(s.batch), "--seconds", str(s.measure_seconds),
               "--target-images", str(s.target_images), "--train-seconds", f"{estimate:.0f}"]
    if s.measure_compile:
        command.append("--compile")
    result = run.child(command, "measure.log", timeout=run.allowed("plan"))
    run.say(run.tail("measure.log", 12))
    measured = json.loads(out.read_text()) if out.is_file() else {}
    decision = decide(measured, _training_seconds(run, 0.0), s)
    decision["measure_exit"] = result
    run.facts["plan"] = decision
    _write_json(run.records / "plan.json", decision)
    if result["rc"] != 0 or result["stopped"]:
        how = "stopped at its time limit" if result["stopped"] else f"exit {result['rc']}"
        return f"{decision['summary']} (measurement {how}: the defaults where it said nothing)"
    return decision["summary"]


def _training_seconds(run: Run, before: float) -> float:
    """The training time the deadline leaves once `before` more seconds have passed."""
    return rules.training_seconds(run.left() - before, run.allowed("after-training"),
                                     run.allowed("train-startup"), run.allowed("least-training"))


def decide(measured: dict, seconds: float, sizes: Sizes) -> dict:
    """Width, batch and compile from the measurements (defaults where one is missing)."""
    width = measured.get("width", WARM_WIDTH)
    batch = measured.get("batch", sizes.batch)
    eager = next((r["images_per_s"] for r in measured.get("eager", [])
                  if (r["width"], r["batch"]) == (width, batch)), None)  # fmt: skip
    compiled = measured.get("compiled") or {}
    use_compile, why = False, "compile not measured"
    if compiled.get("images_per_s") and eager:
        c, rate = compiled["compile_seconds"], compiled["images_per_s"]
        use_compile = rules.compile_pays(eager, rate, c, seconds)
        why = (f"compile {'pays' if use_compile else 'does not pay'}: {rate:,.0f} against "
               f"{eager:,.0f} img/s eager, {c:.0f} s to compile, {seconds:.0f} s of training")
    rate = compiled.get("images_per_s") if use_compile else eager
    projected = None if rate is None else rate * seconds
    summary = (f"ch {width}, batch {batch}, {'compiled' if use_compile else 'eager'}"
               + (f", about {projected:,.0f} images in {seconds:.0f} s" if projected else ""))
    return {"width": width, "batch": batch, "compile": use_compile, "compile_reason": why,
            "width_reason": measured.get("width_reason", "not measured: the shipped width"),
            "batch_reason": measured.get("batch_reason", "not measured: the config's batch"),
            "training_seconds_estimate": seconds, "images_per_s": rate,
            "projected_images": projected,
            "measured": measured, "summary": summary}  # fmt: skip


# --- stage: train --------------------------------------------------------------------------------


def train(run: Run) -> str:
    """ddim train --config cifar10-gpu (--init bundled at the shipped width) for the time left;
    compiled training that makes no checkpoint is run again eagerly, if time is left."""
    decision = run.facts.get("plan") or decide({}, 0.0, run.sizes)
    if not (run.work / "train.npz").is_file():
        raise StageFailed("no training images (the environment stage failed)")
    note = _train(run, decision, decision["compile"], run.work / "run")
    if note is None and decision["compile"] and _training_seconds(run, 0.0) > run.allowed(
            "least-training"):
        run.say("compiled training made no checkpoint: training again, eager")
        note = _train(run, decision, False, run.work / "run-eager")
    if note is None:
        raise StageFailed(f"ddim train made no checkpoint (records/train.log): "
                          f"{run.tail('train.log', 1)}")
    return note


def _train(run: Run, decision: dict, compile: bool, folder: Path) -> str | None:
    """One `ddim train` into `folder` for the time left; its outcome, or None without a
    checkpoint."""
    from ddim.config import load_config

    config = load_config(TRAIN_CONFIG)
    width, batch = decision["width"], decision["batch"]
    overrides = rules.batch_overrides(batch, config.training.lr, config.training.warmup)
    if width != config.model.ch:
        overrides["model.ch"] = width
    seconds = _training_seconds(run, 0.0)
    rate = decision.get("images_per_s")  # a checkpoint about every 90 s (1000 steps if unknown)
    every = max(50, round(rate * 90 / batch / 50) * 50) if rate else 1000
    command = [sys.executable, "-m", "ddim", "train", "--config", TRAIN_CONFIG, "--data",
               str(run.work / "train.npz"), "--batch", str(batch),
               "--time-budget", f"{seconds:.0f}s", "--run-dir", str(folder),
               "--checkpoint-every", str(every), "--keep", "2", "--log-every", "50",
               "--workers", "0", "--cache-dir", str(run.work / "cache")]  # fmt: skip
    command += [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    if width == WARM_WIDTH:
        command += ["--init", "bundled"]
    if compile:
        command.append("--compile")
    if run.sizes.max_steps:
        command += ["--max-steps", str(run.sizes.max_steps)]
    run.say(f"training for {seconds:.0f} s: ch {width}, batch {batch}, "
            f"{'compiled' if compile else 'eager'}")
    limit = seconds + run.allowed("train-startup") + 60
    result = run.child(command, "train.log", timeout=limit)
    run.say(run.tail("train.log", 8))
    return _training_outcome(run, result, folder)


def _training_outcome(run: Run, result: dict, folder: Path) -> str | None:
    """The run's last checkpoint and last metrics, recorded; None when it wrote no checkpoint."""
    from ddim.training import latest_checkpoint

    grids = sorted((folder / "samples").glob("step-*.png"))
    _keep(folder, ("config.yml", "run.json", "init.json", "metrics.jsonl"), run.records / "run")
    _keep(folder / "samples", [g.name for g in grids[-1:]], run.records / "run")
    metrics = folder / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    last = json.loads(lines[-1]) if lines else {}
    try:
        checkpoint = latest_checkpoint(folder)
    except Exception:
        return None
    run.facts["train"] = {**result, "checkpoint": str(checkpoint), "last_metrics": last}
    note = (f"exit {result['rc']}{' (stopped)' if result['stopped'] else ''}; "
            f"{checkpoint.name}")
    if last:
        note += (f", {last['images_seen']:,} images seen, loss {last['loss']:.4f}, "
                 f"{last['images_per_s']:,.0f} img/s at the end")
        losses = [json.loads(line)["loss"] for line in lines]
        if max(losses) > 3 * losses[0]:  # a warm start that diverged, then recovered (or not)
            note += f"; DIVERGED: loss {losses[0]:.4f} first, {max(losses):.4f} at its peak"
    return note


# --- stage: sample -------------------------------------------------------------------------------


def sample(run: Run) -> str:
    """The EMA weights as float16, handed back at once; the main set, then as many table sets
    as fit, each handed back as soon as it is made."""
    from ddim.cli import main as ddim

    checkpoint = (run.facts.get("train") or {}).get("checkpoint")
    if checkpoint is None:
        raise StageFailed("no trained checkpoint")
    s, weights = run.sizes, run.work / "ema-fp16.safetensors"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        rc = ddim(["convert", checkpoint, str(weights), "--half"])
    run.say(printed.getvalue().rstrip())
    if rc != 0:
        raise StageFailed(f"ddim convert --half exit {rc} on {checkpoint}")
    hand_back(run, "weights", weights, weights.name)
    main_bytes = npz_bytes(s.main_n)
    files = run.files_used() + rules.parts_of(main_bytes)
    fit = rules.sets_that_fit(files, run.bytes_used() + main_bytes, npz_bytes(s.set_n))
    sets = sample_sets(s)[: 1 + fit]
    commands = [{"name": name, "argv": ["sample", "--ckpt", str(weights), "--n", str(n),
                                        "--seed", "0", "--batch", str(min(n, s.sample_batch)),
                                        "-o", str(run.work / "samples" / name), *options]}
                for name, n, options in sets]  # fmt: skip
    plan_file, record = run.work / "sample-commands.json", run.work / "sample-record.json"
    _write_json(plan_file, commands)
    run.say(f"sampling {len(sets)} sets: " + ", ".join(name for name, _, _ in sets))
    child = [sys.executable, "-m", "lab.gpu.run", "_commands", str(plan_file), str(record)]
    result = run.child(child, "sample.log", timeout=run.left() - run.allowed("pack"),
                       poll=lambda: hand_back_samples(run, record))  # fmt: skip
    run.say(run.tail("sample.log", 6))
    done = hand_back_samples(run, record)
    run.facts["sample"] = {**result, "commands": done}
    made = [f"{d['name']} ({d['seconds']:.0f} s)" for d in done if d["rc"] == 0]
    return f"{len(made)} of {len(commands)} sets made: " + ", ".join(made)


def hand_back_samples(run: Run, record: Path) -> list[dict]:
    """Hand back every sample set the sampling child has finished and that was not yet; keep
    its sample.json and grid in the records. Returns the child's record so far."""
    try:
        done = json.loads(record.read_text()) if record.is_file() else []
    except ValueError:
        return []
    _write_json(run.records / "sample-commands.json", done)
    for item in done:
        name, folder = item["name"], run.work / "samples" / item["name"]
        if item["rc"] == 0 and f"{name}.npz" not in run.handled:
            _keep(folder, ("sample.json", "grid.png"), run.records / "samples" / name)
            hand_back(run, "samples", folder / "samples.npz", f"{name}.npz")
    return done


def hand_back(run: Run, kind: str, path: Path, name: str) -> bool:
    """Split `path` into OUT_DIR and rewrite the manifest, if it fits beside what is there."""
    size = path.stat().st_size
    run.handled[name] = "did not fit"
    if rules.sets_that_fit(run.files_used(), run.bytes_used(), size) < 1:
        run.say(f"{name}: {size / 2**20:.2f} MiB does not fit in what is handed back")
        return False
    entry = handback.split_file(path, run.out, name)
    entry["kind"] = kind
    run.returned.append(entry)
    run.handled[name] = "handed back"
    run.say(f"{name}: {size / 2**20:.2f} MiB in {len(entry['parts'])} part(s), handed back")
    run.publish()
    return True


def _keep(folder: Path, names, records: Path) -> None:
    """Copy the files `names` of `folder` that exist into `records` (for records.tar.gz)."""
    for name in names:
        if (folder / name).is_file():
            records.mkdir(parents=True, exist_ok=True)
            (records / name).write_bytes((folder / name).read_bytes())


# --- stage: pack ---------------------------------------------------------------------------------


def pack(run: Run) -> str:
    """What is handed back: the weights and sample sets already split into OUT_DIR, the records
    (written after this stage too) and the manifest."""
    parts = run.files_used()
    note = (f"{len(run.returned)} files in {parts} parts, {run.bytes_used() / 2**20:.1f} MiB, "
            "+ records.tar.gz, manifest.json")
    missing = [name for name, state in run.handled.items() if state != "handed back"]
    return note + (f"; did not fit: {', '.join(missing)}" if missing else "")


# --- the whole run -------------------------------------------------------------------------------


STAGES = [("environment", environment), ("cuda-tests", cuda_tests), ("bench", bench),
          ("plan", plan), ("train", train), ("sample", sample), ("pack", pack)]  # fmt: skip
SKIPPABLE = ("cuda-tests", "bench", "plan")  # a later window that only trains: the defaults


def main(argv: list[str] | None = None) -> int:
    """Run every stage into OUT_DIR; exit 0 when every stage was ok, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="empty folder for what the run hands back")
    parser.add_argument("--smoke", action="store_true", help="every stage at tiny size (CPU)")
    parser.add_argument("--minutes", type=float,
                        help="the whole run (default 9; smoke 10, which ends long before)")
    parser.add_argument("--data", type=Path, default=os.environ.get(DATA_VARIABLE) or None,
                        help="the CIFAR-10 training JPEG archive (cifar10-train.tar.xz); "
                             f"default: the environment variable {DATA_VARIABLE}")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl",
                        help="folder of wheels to install for the run (default .whl)")
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--skip", nargs="+", default=[], choices=SKIPPABLE, metavar="STAGE",
                        help=f"stages to leave out, their time going to training: "
                             f"{', '.join(SKIPPABLE)}")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else GPU
    if args.minutes is not None:
        if not args.minutes > 0:
            parser.error("--minutes must be positive")
        sizes = replace(sizes, minutes=args.minutes)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty: the run hands back only its own files there")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(__import__("tempfile").mkdtemp(prefix="ddim-gpu-run-"))
    data = args.data.resolve() if args.data else None
    run = Run(args.out.resolve(), work.resolve(), sizes, data, args.wheels.resolve(), args.smoke)
    run.say(f"GPU harness: {'smoke run' if args.smoke else 'GPU run'}, {sizes.minutes:g} minutes, "
            f"out {run.out}, work {run.work}")
    _on_signals(run)
    for name, fn in STAGES:
        if name in args.skip:
            run.stages.append({"stage": name, "status": "skipped", "seconds": 0, "note": "--skip"})
            continue
        run.stage(name, lambda fn=fn: fn(run))
    run.say(summary(run))
    run.publish()
    return 0 if all(r["status"] in ("ok", "skipped") for r in run.stages) else 1


def _on_signals(run: Run) -> None:
    """SIGTERM/SIGINT: stop the running child (the trainer writes its checkpoint), publish the
    records, exit."""

    def handle(signum, frame):
        if run.process is not None:
            run.stop_child()
        run.stages.append({"stage": "interrupted", "status": "failed", "seconds": 0,
                           "note": f"signal {signum}"})  # fmt: skip
        run.publish()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def summary(run: Run) -> str:
    """The run's stages and the files it hands back, as lines for the log's end."""
    lines = ["== summary", "| stage | status | seconds | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['stage']} | {r['status']} | {r['seconds']} | {r['note']} |"
              for r in run.stages]  # fmt: skip
    lines.append(f"handed back in {run.out}:")
    for path in sorted(run.out.iterdir()):
        lines.append(f"  {path.name}  {path.stat().st_size / 2**20:.2f} MiB")
    lines.append(f"total {time.monotonic() - run.start:.0f} s")
    return "\n".join(lines)


# --- children: measurement, and ddim commands in one process -----------------------------------


def measure_main(argv: list[str]) -> int:
    """Training images/s of each width (at --batch), of each batch (at the shipped width), and
    of the chosen one compiled; the width and batch rules applied; JSON written after each."""
    p = argparse.ArgumentParser(prog="python -m lab.gpu.run _measure")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--widths", type=int, nargs="+", required=True)
    p.add_argument("--batches", type=int, nargs="+", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--target-images", type=float, required=True)
    p.add_argument("--train-seconds", type=float, required=True)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)
    import torch

    from ddim.config import apply_overrides, load_config

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = load_config(args.config)
    record: dict = {"device": str(device), "train_seconds": args.train_seconds, "eager": [],
                    "parameters": {}}  # fmt: skip

    def config(width, batch):
        return apply_overrides(base, [f"model.ch={width}", f"training.batch_size={batch}"])

    def rate(width, batch, compile=False):
        row = measure_rate(config(width, batch), device, batch, compile, args.seconds)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the last candidate's memory, for the next one
        print(f"ch {width}, batch {batch}{', compiled' if compile else ''}: "
              f"{row['images_per_s']:,.0f} img/s (first step {row['first_step_s']:.1f} s)",
              flush=True)  # fmt: skip
        record["parameters"][str(width)] = row.pop("parameters")
        return row

    for width in args.widths:
        record["eager"].append(rate(width, args.batch))
        _write_json(args.out, record)
    warm = args.widths[0]
    for batch in args.batches:
        if batch != args.batch:
            record["eager"].append(rate(warm, batch))
            _write_json(args.out, record)
    by_width = {r["width"]: r["images_per_s"] for r in record["eager"] if r["batch"] == args.batch}
    parameters = {int(k): v for k, v in record["parameters"].items()}
    width, record["width_reason"] = rules.choose_width(
        by_width, parameters, args.train_seconds, target_images=args.target_images)
    batch, record["batch_reason"] = args.batch, "the config's batch (other widths: one batch)"
    if width == warm:
        by_batch = {r["batch"]: r["images_per_s"] for r in record["eager"] if r["width"] == warm}
        batch, record["batch_reason"] = rules.choose_batch(by_batch)
    record |= {"width": width, "batch": batch, "chosen_eager_images_per_s": next(
        r["images_per_s"] for r in record["eager"] if (r["width"], r["batch"]) == (width, batch))}
    _write_json(args.out, record)
    print(record["width_reason"], record["batch_reason"], sep="\n", flush=True)
    if args.compile:
        row = rate(width, batch, compile=True)
        eager_step = batch / record["chosen_eager_images_per_s"]
        row["compile_seconds"] = max(0.0, row["first_step_s"] - eager_step)
        record["compiled"] = row
        _write_json(args.out, record)
    return 0


def measure_rate(config, device, batch: int, compile: bool, seconds: float) -> dict:
    """Images/s of full training steps (ddim train's: bf16 where native, channels-last, Adam,
    clipping, EMA) on random uint8 images held on the device, after two warm-up steps."""
    import torch

    from ddim.data import infinite_batches
    from ddim.device import native_bf16
    from ddim.diffusion.schedule import alpha_bars
    from ddim.network.compiled import compile_blocks
    from ddim.training import Objective, Schedule, init_training, train_step

    images = torch.randint(0, 256, (max(2 * batch, 64), 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)  # fmt: skip
    state = init_training(config, device, channels_last=True)
    model = compile_blocks(state.net) if compile else state.net  # as `ddim train --compile`
    batches = (x.contiguous(memory_format=torch.channels_last)
               for x in infinite_batches(images, batch, seed=0))  # fmt: skip
    alpha_bar = alpha_bars(config.diffusion.betas()).to(device, torch.float32)
    objective, schedule = Objective.from_config(config), Schedule.from_config(config)
    amp = native_bf16(device)

    def steps(n: int) -> float:
        began = time.perf_counter()
        for _ in range(n):
            train_step(state, next(batches), alpha_bar, objective=objective, schedule=schedule,
                       model=model, amp=amp)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - began

    first = steps(1)
    per_step = steps(1)
    n = max(1, round(seconds / max(per_step, 1e-6)))
    elapsed = steps(n)
    parameters = sum(p.numel() for p in state.net.parameters())
    return {"width": config.model.ch, "batch": batch, "compile": compile, "steps": n,
            "images_per_s": n * batch / elapsed, "first_step_s": first,
            "parameters": parameters}  # fmt: skip


def commands_main(argv: list[str]) -> int:
    """Run the `ddim` commands of a JSON list in this one process (one import, one CUDA context),
    recording each one's exit code and seconds after it ends."""
    plan_file, record_file = map(Path, argv)
    from ddim.cli import main as ddim

    done = []
    for item in json.loads(plan_file.read_text()):
        print(f"$ ddim {' '.join(item['argv'])}", flush=True)
        began = time.monotonic()
        try:
            rc = ddim(item["argv"])
        except SystemExit as exit_:
            rc = exit_.code if isinstance(exit_.code, int) else 1
        except Exception:
            traceback.print_exc()
            rc = 1
        done.append({"name": item["name"], "rc": rc, "seconds": time.monotonic() - began})
        _write_json(record_file, done)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        sys.exit(measure_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "_commands":
        sys.exit(commands_main(sys.argv[2:]))
    sys.exit(main())
