"""Reliability and security: faults, bad input and hostile files, driven through the real CLI.

The cases here run `python -m ddim` in a subprocess; misuse, reruns and hostile input case by case,
in-process, are in test_faults.py. Covered elsewhere and not repeated here: a NaN loss stops the run
and keeps the last good checkpoint (test_loop.py::test_non_finite_loss_stops_and_keeps_last_good_
checkpoint), SIGTERM writes a checkpoint (test_loop.py), a pickle that would run code is refused by
`load_checkpoint` (test_checkpoint.py::test_malicious_pickle_is_refused) and by the CIFAR reader
(test_datasets.py::test_hostile_cifar_pickle_is_refused). Figures are printed; run with `-s`.
"""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import train_command
from PIL import Image

import ddim.cli
from ddim.checkpoint import load_checkpoint, save_checkpoint
from ddim.config import dump_config
from ddim.errors import DdimError
from ddim.network.precision import eps_model_for
from ddim.sampling import build_sampler, sample_seeds
from ddim.training import latest_checkpoint, train

ENV = dict(os.environ, OMP_NUM_THREADS="1")


class Payload:
    """Unpickling this would create the file `marker` (a stand-in for running any code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# --- faults: SIGKILL soak, full disk ------------------------------------------------------------


def _newest_step(folder: Path) -> int:
    """The step in the newest checkpoint's name (complete files: temporaries are dot-named)."""
    return max((int(p.stem.split("-")[1]) for p in folder.glob("ckpt-*.safetensors")), default=0)


def _kill_when(proc, folder: Path, after: int, mid_write: bool, rng, timeout=300.0) -> bool:
    """SIGKILL `proc` once a checkpoint newer than `after` exists: at once when a temporary
    checkpoint file is seen (mid_write), else after a random delay. True if one was seen."""
    deadline = time.time() + timeout
    while _newest_step(folder) <= after:
        assert proc.poll() is None, "training exited early"
        assert time.time() < deadline, f"no checkpoint after step {after}"
        time.sleep(0.01)
    if not mid_write:
        time.sleep(rng.uniform(0.0, 0.4))
    while mid_write and not any(folder.glob(".ckpt-*.tmp")) and time.time() < deadline:
        pass  # busy-wait: writes last milliseconds
    writing = any(folder.glob(".ckpt-*.tmp"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return writing


@pytest.mark.slow
def test_ten_sigkills_with_checkpoint_every_step_lose_nothing(
    tmp_path, blobs, cli_train, write_npz
):
    data = write_npz(tmp_path / "blobs.npz", blobs(32))
    run_dir, folder = tmp_path / "run", tmp_path / "run" / "checkpoints"
    command = cli_train(
        "--data", str(data), "--set", "training.n_iters=100000", "--run-dir", str(run_dir),
        "--checkpoint-every", "1", "--keep", "2", "--sample-every", "0", "--workers", "0",
        "--log-every", "1", "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    rng = np.random.default_rng(8)
    steps, mid_write = [0], 0
    for kill in range(10):
        resume = ["--resume", str(run_dir)] if kill else []
        proc = subprocess.Popen(
            command + resume, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        mid_write += _kill_when(proc, folder, steps[-1], mid_write=kill % 2 == 0, rng=rng)
        newest = latest_checkpoint(run_dir)
        checkpoint = load_checkpoint(newest)
        assert checkpoint.load_train_state()["step"] == checkpoint.step
        assert checkpoint.step > steps[-1], f"step went from {steps[-1]} to {checkpoint.step}"
        steps.append(checkpoint.step)
    final = subprocess.run(
        command + ["--resume", str(run_dir), "--max-steps", str(steps[-1] + 2)],
        env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert final.returncode == 0, final.stderr[-2000:]
    assert load_checkpoint(latest_checkpoint(run_dir)).step == steps[-1] + 2
    assert not list(folder.glob(".*.tmp")), "a killed write left a temporary file behind"
    assert (run_dir / ".lock").is_file()  # each killed run left its lock file; none blocked
    print(f"\n10 SIGKILLs survived ({mid_write} while a checkpoint was being written); "
          f"steps after each: {steps[1:]}; resumed to {steps[-1] + 2}")


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_saving_is_a_clear_error_and_keeps_the_old_checkpoint(
    tmp_path, monkeypatch
, blobs, small_config):
    config = small_config("training.n_iters=2")
    first = train(config, tmp_path, images=blobs(16), sample_every=0, progress=False)
    before = sorted(p.name for p in first.parent.iterdir())
    net = load_checkpoint(first)
    monkeypatch.setattr(safetensors.torch, "save_file", _enospc)
    target = first.with_name("ckpt-00000003.safetensors")
    with pytest.raises(DdimError, match="No space left on device") as error:
        save_checkpoint(
            target, model_state=net.model_state, config=config, step=3, train_state={"step": 3}
        )
    assert "\n" not in str(error.value) and str(target) in str(error.value)
    assert sorted(p.name for p in first.parent.iterdir()) == before  # no temporaries, no orphans
    assert load_checkpoint(latest_checkpoint(tmp_path)).step == 2
    # the same through the training loop, resuming: it stops with the DdimError, 2 still loads
    with pytest.raises(DdimError, match="No space left on device"):
        train(
            small_config("training.n_iters=4"), tmp_path, images=blobs(16), resume=tmp_path,
            sample_every=0, progress=False,
        )  # fmt: skip
    assert not list(first.parent.glob(".*.tmp"))
    assert load_checkpoint(latest_checkpoint(tmp_path)).load_train_state()["step"] == 2


def test_full_disk_while_writing_the_training_state(tmp_path, monkeypatch, blobs, small_config):
    config = small_config()
    first = train(config, tmp_path, images=blobs(16), max_steps=1, sample_every=0, progress=False)
    before = sorted(p.name for p in first.parent.iterdir())
    monkeypatch.setattr(Path, "write_bytes", _enospc)
    checkpoint = load_checkpoint(first)
    with pytest.raises(DdimError, match="No space left on device"):
        save_checkpoint(
            first.with_name("ckpt-00000002.safetensors"), model_state=checkpoint.model_state,
            config=config, step=2, train_state={"step": 2},
        )  # fmt: skip
    assert sorted(p.name for p in first.parent.iterdir()) == before


# --- bad input through the CLI ------------------------------------------------------------------


def _png(path: Path, size=(8, 8), mode="RGB", seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    array = g.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).save(path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_checkpoint):
    """A folder of bad (and awkward but valid) inputs, built once."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "empty").mkdir()
    for k in range(4):
        _png(root / "corrupt" / f"{k}.png", seed=k)
        _png(root / "mixed-sizes" / f"{k}.png", size=(8 + 4 * k,) * 2, seed=k)
        _png(root / "mixed-modes" / f"{k}.png", mode="L" if k % 2 else "RGB", seed=k)
    (root / "corrupt" / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (root / "not-a-zip.zip").write_bytes(b"PK but not really a zip archive" * 10)
    config = load_checkpoint(tiny_checkpoint).config
    (root / "tiny.yml").write_text(dump_config(config))
    (root / "wide.yml").write_text(dump_config(config).replace("ch: 32", "ch: 64"))
    (root / "unknown-key.yml").write_text(dump_config(config) + "extra_section:\n  lr: 1\n")
    (root / "typo-key.yml").write_text(dump_config(config).replace("  lr:", "  learning_rate:"))
    (root / "wrong-type.yml").write_text(dump_config(config).replace("ch: 32", "ch: wide"))
    data = tiny_checkpoint.read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "evil.pth").parent.mkdir(exist_ok=True)
    torch.save({"conv_in.weight": torch.zeros(1), "x": Payload(root / "pwned")}, root / "evil.pth")
    # the metadata edited as a text editor would: same length, so still a valid safetensors file
    edited = data.replace(b'\\"ch\\": 32', b'\\"ch\\": 64', 1)
    assert edited != data
    (root / "edited.safetensors").write_bytes(edited)
    checkpoint = load_checkpoint(tiny_checkpoint)
    nan = {k: v.clone() for k, v in checkpoint.model_state.items()}
    nan["conv_out.weight"][0] = float("nan")
    save_checkpoint(root / "nan.safetensors", model_state=nan, config=config, step=0)
    (root / "bomb.yml").write_text("a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b]\n")
    (root / "a-file").write_text("not a folder")
    return root


def _train(*args):
    return train_command("--max-steps", "1", "--sample-every", "0", "--workers", "0", *args)[1:]


def _sample(ckpt, *args):
    return ["-m", "ddim", "sample", "--ckpt", str(ckpt), "--n", "2", "--device", "cpu", *args]


# (id, arguments after `python`, what the one-line error must say); {root} and {ckpt} filled in.
BAD_INPUTS = [
    ("missing-dataset", _train("--data", "{root}/nowhere"), "dataset not found"),
    ("empty-folder", _train("--data", "{root}/empty"), "no images"),
    ("corrupt-image", _train("--data", "{root}/corrupt"), "corrupt/4.png"),
    ("not-a-zip", _train("--data", "{root}/not-a-zip.zip"), "not-a-zip.zip"),
    ("config-unknown-section", _train("--config", "{root}/unknown-key.yml"), "extra_section"),
    ("config-unknown-key", _train("--config", "{root}/typo-key.yml"), "training.learning_rate"),
    ("config-wrong-type", _train("--config", "{root}/wrong-type.yml"), "model.ch='wide'"),
    ("config-missing-file", _train("--config", "{root}/nope.yml"), "nope.yml"),
    ("override-unknown-key", _train("--set", "training.lr_max=1"), "training.lr_max"),
    ("override-bad-value", _train("--set", "training.lr=-1"), "training.lr=-1.0"),
    ("keep-zero", _train("--data", "{root}/mixed-modes", "--keep", "0"), "--keep"),
    ("log-every-zero", _train("--data", "{root}/mixed-modes", "--log-every", "0"), "--log-every"),
    ("max-steps-negative", _train("--data", "{root}/mixed-modes", "--max-steps", "-1"), "--max"),
    ("resume-nothing", _train("--resume", "{root}/empty"), "no complete checkpoint"),
    ("init-missing", _train("--data", "{root}/mixed-modes", "--init", "{root}/none.safetensors"),
     "no checkpoint file"),
    ("init-other-network", _train("--data", "{root}/mixed-modes", "--set", "model.ch=64",
                                  "--init", "{ckpt}"), "its network differs from the config's"),
    ("ckpt-missing", _sample("{root}/none.safetensors"), "none.safetensors"),
    ("ckpt-truncated", _sample("{root}/truncated.safetensors"), "truncated"),
    ("ckpt-other-config", _sample("{ckpt}", "--config", "{root}/wide.yml"),
     "records its config, and the config given differs: model.ch is 32 there, 64 given"),
    ("ckpt-not-a-checkpoint", _sample("{root}/tiny.yml"), "not a checkpoint"),
    ("ckpt-evil-pickle", _sample("{root}/evil.pth"), "refusing to load"),
    ("steps-zero", _sample("{ckpt}", "--steps", "0"), "got 0"),
    ("steps-above-T", _sample("{ckpt}", "--steps", "1001"), "got 1001"),
    ("eta-negative", _sample("{ckpt}", "--eta", "-0.5"), "--eta"),
    ("n-zero", _sample("{ckpt}", "--n", "0"), "--n"),
    ("fid-mixed-sizes", ["-m", "ddim", "fid", "ref", "{root}/mixed-sizes", "-o", "{root}/r.npz",
                         "--device", "cpu"], "pass --resolution N"),
    ("fid-missing-ref", ["-m", "ddim", "fid", "calc", "{root}/mixed-modes", "--ref",
                         "{root}/none.npz"], "none.npz"),
    ("seed-2^63", _sample("{ckpt}", "--seed", str(2**63)), "must lie in [0, 2^63 - 1]"),
    ("eta-inf", _sample("{ckpt}", "--eta", "inf"), "--eta=inf must be finite"),
    ("eta-with-ddpm", _sample("{ckpt}", "--sampler", "ddpm", "--eta", "1"), "--eta applies to"),
    ("ckpt-edited-metadata", _sample("{root}/edited.safetensors"), "metadata fails the checksum"),
    ("ckpt-nan-weights", _sample("{root}/nan.safetensors"), "NaN or infinite"),
    ("out-is-a-file", _sample("{ckpt}", "-o", "{root}/a-file"), "exists and is not a folder"),
    ("config-alias-bomb", _train("--config", "{root}/bomb.yml"), "aliases (*a) are not allowed"),
    ("oracle-n-negative", ["-m", "ddim", "oracle", "--n", "-5"], "--n must be >= 0, got -5"),
    ("bench-repeats-zero", ["-m", "ddim", "bench", "--repeats", "0"], "--repeats must be >= 1"),
]  # fmt: skip
ARGPARSE_ERRORS = [
    ("skip-unknown", _sample("{ckpt}", "--skip", "cubic"), "invalid choice: 'cubic'"),
    ("steps-not-a-number", _sample("{ckpt}", "--steps", "ten"), "invalid int value"),
]


def _run_cli(argv, root, ckpt, cwd):
    argv = [a.format(root=root, ckpt=ckpt) for a in argv]
    return subprocess.run(
        [sys.executable, *argv], env=ENV, capture_output=True, text=True, timeout=600, cwd=cwd
    )


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in BAD_INPUTS],
                         ids=[c[0] for c in BAD_INPUTS])  # fmt: skip
def test_bad_input_is_one_line_exit_2(argv, message, inputs, tiny_checkpoint, tmp_path):
    out = _run_cli(argv, inputs, tiny_checkpoint, tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and errors[0] == lines[-1], out.stderr
    assert errors[0].startswith("ddim ") and message in errors[0], errors[0]
    assert not (inputs / "pwned").exists()
    assert not (tmp_path / "runs").exists(), "a refused training left a run directory"


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in ARGPARSE_ERRORS],
                         ids=[c[0] for c in ARGPARSE_ERRORS])  # fmt: skip
def test_bad_choices_are_argparse_errors(argv, message, inputs, tiny_checkpoint, tmp_path):
    out = _run_cli(argv, inputs, tiny_checkpoint, tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert message in out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("folder", ["mixed-modes", "mixed-sizes"])
def test_grayscale_with_rgb_and_mixed_sizes_train(folder, inputs, tmp_path):
    """Grayscale is replicated to RGB (with a warning); training resizes every image to
    data.image_size, so mixed sizes train too (FID without --resolution refuses them, above)."""
    argv = _train("--data", f"{inputs}/{folder}", "--run-dir", str(tmp_path / "run"),
                  "--cache-dir", str(tmp_path / "cache"))  # fmt: skip
    out = _run_cli(argv, inputs, "", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    if folder == "mixed-modes":
        assert "converting L images to RGB" in out.stderr
    assert load_checkpoint(latest_checkpoint(tmp_path / "run")).step == 1


@pytest.mark.parametrize(
    ("command", "error", "hint"),
    [
        (["sample", "--ckpt", "x", "--batch", "512"], "cuda",
         "at batch size 512; try a smaller --batch, e.g. 256"),
        (["sample", "--ckpt", "x"], "host", "out of memory; try a smaller --batch"),
        (["train", "--data", "x"], "cuda", "try a smaller --batch"),
    ],
)
def test_out_of_memory_is_one_line_with_a_hint(command, error, hint, monkeypatch, capsys):
    def run(args):
        raise torch.OutOfMemoryError("CUDA out of memory.") if error == "cuda" else MemoryError()

    parser = ddim.cli.build_parser
    monkeypatch.setattr(ddim.cli, "build_parser", lambda: _with_run(parser(), command[0], run))
    assert ddim.cli.main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ddim {command[0]}: error: out of memory")
    assert hint in err


def _with_run(parser, name, run):
    """The parser with sub-command `name`'s run function replaced."""
    subparsers = next(a for a in parser._actions if a.dest == "command")
    subparsers.choices[name].set_defaults(_run=run)
    return parser


def test_other_exceptions_still_raise(monkeypatch):
    parser = ddim.cli.build_parser

    def run(args):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(ddim.cli, "build_parser", lambda: _with_run(parser(), "sample", run))
    with pytest.raises(RuntimeError, match="a bug"):
        ddim.cli.main(["sample", "--ckpt", "x"])


# --- hostile files and where outputs go ---------------------------------------------------------


def test_training_writes_only_safetensors_weights_and_a_weights_only_state(
    tmp_path, blobs, small_config
):
    images = blobs(16)
    train(small_config("training.n_iters=4"), tmp_path, images=images, checkpoint_every=2,
          sample_every=0, progress=False)  # fmt: skip
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    weights = [n for n in files if n.endswith(".safetensors")]
    states = [n for n in files if ".train-" in n and n.endswith(".pt")]
    assert len(weights) == 2 and len(states) == 2 and len(files) == 4, files
    for name in weights:
        with open(tmp_path / "checkpoints" / name, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
            assert f.read(1) == b"{" and header < 10**6  # a safetensors header, not a pickle
    for name in states:
        torch.load(tmp_path / "checkpoints" / name, weights_only=True)  # plain data only


def test_config_paths_cannot_move_outputs(tmp_path, blobs, cli_train, small_config, write_npz):
    """Config path keys are inputs only (data.path, data.subdir); outputs go to --runs/--run-dir
    and --cache-dir. A config whose data keys are full of `..` writes nowhere else."""
    work = tmp_path / "work"
    (work / "deep" / "er").mkdir(parents=True)
    data = write_npz(tmp_path / "blobs.npz", blobs(16))
    config = small_config(f"data.path={work}/deep/er/../../../{data.name}",
                          "data.dataset=../../../escaped")
    yml = work / "evil.yml"
    yml.write_text(dump_config(config))
    before = {p for p in tmp_path.rglob("*")}
    out = subprocess.run(
        [*cli_train("--config", str(yml), "--max-steps", "1", "--workers", "0", "--runs",
                    str(work / "runs"), "--cache-dir", str(work / "cache"), "--sample-every", "0")],
        env=ENV, capture_output=True, text=True, timeout=600, cwd=work / "deep" / "er",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    new = {p for p in tmp_path.rglob("*")} - before
    allowed = (work / "runs", work / "cache")
    outside = [p for p in new if not any(p == a or a in p.parents for a in allowed)]
    assert not outside, outside
    assert not Path("/tmp/escaped").exists() and not (tmp_path.parent / "escaped").exists()
    (run,) = (work / "runs").iterdir()
    assert run.name == "00000-blobs-8px"


# --- long runs hold steady ----------------------------------------------------------------------


def _rss_kib() -> int:
    """This process's resident set size in KiB (/proc/self/status VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    pytest.skip("no /proc/self/status here")


def test_many_sampling_batches_do_not_grow_memory(tiny_checkpoint):
    checkpoint = load_checkpoint(tiny_checkpoint)
    from ddim.checkpoint import model_from_checkpoint

    eps_model = eps_model_for(model_from_checkpoint(checkpoint))
    config = checkpoint.config
    sampler = build_sampler(config.diffusion.betas(), 10, eta=0.5)
    shape = (3, config.data.image_size, config.data.image_size)

    def one_batch(b):
        x = sample_seeds(eps_model, sampler, range(8 * b, 8 * b + 8), shape, "cpu")
        assert torch.isfinite(x).all()

    for b in range(5):  # warm-up: allocator pools, lazy imports
        one_batch(b)
    start = _rss_kib()
    readings = []
    for b in range(5, 35):
        one_batch(b)
        readings.append(_rss_kib())
    growth = (readings[-1] - start) / 1024
    print(f"\nRSS over 30 batches of 8 (S=10): after warm-up {start / 1024:.1f} MiB, "
          f"after {readings[-1] / 1024:.1f} MiB, peak {max(readings) / 1024:.1f} MiB, "
          f"growth {growth:+.2f} MiB")
    assert growth < 4.0
