"""Misuse, reruns and hostile input, through the command line: each case asserts its outcome (the
result, or a one-line `ddim <cmd>: error: …` naming the problem, exit 2) and that nothing that was
there before was lost or changed. Commands run in-process (`ddim.cli.main`); the cases that need a
second process (locks, device nodes) start one. docs/reliability.md lists the cases.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from PIL import Image

import ddim.cli
from ddim.checkpoint import load_checkpoint, save_checkpoint
from ddim.errors import DdimError
from ddim.files import folder_lock

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run(capsys, *argv) -> tuple[int, str]:
    """Run `ddim *argv` in-process: (exit code, its one error line or ""); an error must be
    exactly one line on stderr (progress bars aside)."""
    capsys.readouterr()
    code = ddim.cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    if code == 2:
        assert len(errors) == 1 and errors[0].startswith(f"ddim {argv[0]}: error: "), err
        assert len(errors[0]) < 700, errors[0]
    return code, errors[0] if errors else ""


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (temporaries and locks aside) and the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith((".tmp", ".lock"))
    }


def sample(ckpt, out, *extra):
    return ["sample", "--ckpt", ckpt, "--n", "4", "--steps", "2", "--batch", "2",
            "--device", "cpu", "-o", out, *extra]  # fmt: skip


# --- the output contract: `ddim sample` ---------------------------------------------------------


def test_sample_rerun_with_the_same_settings_reuses_every_shard(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "s"
    assert run(capsys, *sample(tiny_checkpoint, out))[0] == 0
    before = snapshot(out / "parts")
    assert run(capsys, *sample(tiny_checkpoint, out, "--batch", "3"))[0] == 0
    assert snapshot(out / "parts") == before  # nothing remade, whatever the batch size
    assert json.loads((out / "sample.json").read_text())["images_made_this_run"] == 0


def test_sample_grows_n_in_the_same_folder(tiny_checkpoint, tmp_path, capsys):
    small, grown = tmp_path / "small", tmp_path / "grown"
    assert run(capsys, *sample(tiny_checkpoint, small, "--n", "10"))[0] == 0
    assert run(capsys, *sample(tiny_checkpoint, grown, "--n", "4"))[0] == 0
    first = snapshot(grown / "parts")
    assert run(capsys, *sample(tiny_checkpoint, grown, "--n", "10", "--batch", "4"))[0] == 0
    record = json.loads((grown / "sample.json").read_text())
    assert record["images_made_this_run"] == 6 and record["n"] == 10
    assert all(snapshot(grown / "parts")[name] == sha for name, sha in first.items())
    with np.load(grown / "samples.npz") as a, np.load(small / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])  # the same as sampling 10 at once


# (id, flags that change what the images would be, the setting the error names)
OTHER_SETTINGS = [
    ("steps", ["--steps", "3"], "sampler.steps was 2, now 3"),
    ("eta", ["--eta", "0.5"], "sampler.eta was 0.0, now 0.5"),
    ("seed", ["--seed", "5"], "seed was 0, now 5"),
    ("skip", ["--skip", "quad"], 'sampler.skip was "uniform", now "quad"'),
    ("raw-weights", ["--raw"], 'weights was "ema", now "raw"'),
    ("sampler", ["--sampler", "ddpm"], "sampler."),
    ("checkpoint", ["--ckpt", "{other}"], "checkpoint_sha256 was"),
]


@pytest.mark.parametrize(("flags", "message"), [c[1:] for c in OTHER_SETTINGS],
                         ids=[c[0] for c in OTHER_SETTINGS])  # fmt: skip
def test_sample_into_a_folder_of_other_settings_is_refused(
    flags, message, tiny_checkpoint, tmp_path, capsys
):
    out, other = tmp_path / "s", tmp_path / "other.safetensors"
    checkpoint = load_checkpoint(tiny_checkpoint)
    save_checkpoint(other, model_state=checkpoint.model_state, config=checkpoint.config, step=1)
    assert run(capsys, *sample(tiny_checkpoint, out))[0] == 0
    before = snapshot(out)
    flags = [f.format(other=other) for f in flags]
    code, error = run(capsys, *sample(tiny_checkpoint, out), *flags)
    assert code == 2 and message in error and "--overwrite" in error
    assert snapshot(out) == before
    # --overwrite replaces the folder's images and records the new settings
    argv = [*sample(tiny_checkpoint, out), *flags, "--overwrite"]
    assert run(capsys, *argv)[0] == 0
    assert run(capsys, *argv[:-1])[0] == 0  # and they are now the folder's settings


def test_a_folder_without_a_record_is_not_taken_over(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "old"
    (out / "parts").mkdir(parents=True)
    (out / "samples.npz").write_bytes(b"made by something else")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    code, error = run(capsys, *sample(tiny_checkpoint, out))
    assert code == 2 and "no record of their settings" in error and snapshot(out) == before
    assert run(capsys, *sample(tiny_checkpoint, out, "--overwrite"))[0] == 0
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite removes only sample's names


def test_temporary_and_damaged_shards_are_cleaned_and_remade(tiny_checkpoint, tmp_path, capsys):
    clean, out = tmp_path / "clean", tmp_path / "s"
    assert run(capsys, *sample(tiny_checkpoint, clean))[0] == 0
    assert run(capsys, *sample(tiny_checkpoint, out))[0] == 0
    parts = out / "parts"
    (parts / ".part-0000002.npz.k1ll3d.tmp").write_bytes(b"PK\x03\x04 half a shard")
    (parts / "part-0000002.npz").write_bytes(b"PK\x03\x04 damaged on disk")
    (out / ".samples.npz.x.tmp").write_bytes(b"left by a kill")
    with pytest.warns(UserWarning, match="removing a damaged shard"):
        assert run(capsys, *sample(tiny_checkpoint, out))[0] == 0
    assert not list(out.rglob("*.tmp"))
    with np.load(out / "samples.npz") as a, np.load(clean / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])


def test_full_disk_while_sampling_keeps_the_shards_made(tiny_checkpoint, tmp_path, capsys,
                                                        monkeypatch):  # fmt: skip
    out = tmp_path / "s"
    assert run(capsys, *sample(tiny_checkpoint, out, "--n", "2"))[0] == 0
    before = snapshot(out / "parts")
    real = np.savez

    def full(file, **arrays):
        real(file, **arrays)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    code, error = run(capsys, *sample(tiny_checkpoint, out))
    assert code == 2 and "No space left on device" in error
    assert snapshot(out / "parts") == before and not list(out.rglob("*.tmp"))
    monkeypatch.setattr(np, "savez", real)
    assert run(capsys, *sample(tiny_checkpoint, out))[0] == 0  # the disk has room again


# --- the output contract: every other command that writes ---------------------------------------


def _encode(ckpt, data, out, *extra):
    return ["encode", "--ckpt", ckpt, "--images", data, "--n", "2", "--steps", "2", "-o", out,
            *extra]  # fmt: skip


def _reconstruct(ckpt, data, out, *extra):
    return ["reconstruct", "--ckpt", ckpt, "--images", data, "--n", "2", "--steps", "2", "-o", out,
            *extra]  # fmt: skip


def _interpolate(ckpt, data, out, *extra):
    return ["interpolate", "--ckpt", ckpt, "--seeds", "1", "2", "--num", "3", "--steps", "2",
            "-o", out, *extra]  # fmt: skip


def _trajectory(ckpt, data, out, *extra):
    return ["trajectory", "--ckpt", ckpt, "--steps", "2", "-o", out, *extra]


def _oracle(ckpt, data, out, *extra):
    return ["oracle", "--steps", "2", "--etas", "0", "--n", "8", "--dim", "2", "-o", out, *extra]


def _convert(ckpt, data, out, *extra):
    return ["convert", ckpt, out, *extra]


# (command, argv builder, output name, flags that change the result, the setting named)
WRITERS = [
    ("encode", _encode, "latents.npz", ["--steps", "3"], "steps was 2, now 3"),
    ("reconstruct", _reconstruct, "recon", ["--n", "1"], "n was 2, now 1"),
    ("interpolate", _interpolate, "strip.png", ["--num", "4"], "num was 3, now 4"),
    ("trajectory", _trajectory, "traj.png", ["--seed", "3"], "seed was 0, now 3"),
    ("oracle", _oracle, "oracle.md", ["--seed", "3"], "seed was 0, now 3"),
    ("convert", _convert, "half.safetensors", ["--half"], "half was false, now true"),
]


@pytest.mark.parametrize(("build", "name", "flags", "message"), [c[1:] for c in WRITERS],
                         ids=[c[0] for c in WRITERS])  # fmt: skip
def test_every_writer_resumes_refuses_or_overwrites(
    build, name, flags, message, tiny_checkpoint, tmp_path, capsys, write_npz, blobs
):
    data, out = write_npz(tmp_path / "data.npz", blobs(4)), tmp_path / name
    assert run(capsys, *build(tiny_checkpoint, data, out))[0] == 0
    assert run(capsys, *build(tiny_checkpoint, data, out))[0] == 0  # same settings: fine
    before = snapshot(tmp_path)
    code, error = run(capsys, *build(tiny_checkpoint, data, out, *flags))
    assert code == 2 and message in error, error
    assert snapshot(tmp_path) == before
    assert run(capsys, *build(tiny_checkpoint, data, out, *flags, "--overwrite"))[0] == 0
    assert snapshot(tmp_path) != before


def test_an_existing_file_without_a_record_is_not_replaced(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "strip.png"
    out.write_bytes(b"a picture I made")
    code, error = run(capsys, *_interpolate(tiny_checkpoint, None, out))
    assert code == 2 and "no record of their settings" in error
    assert out.read_bytes() == b"a picture I made"


def test_demo_and_bench_check_their_output_before_any_work(tmp_path, capsys, monkeypatch):
    import ddim.experiments.bench
    import ddim.experiments.demo

    started = []  # the work that began: none may

    def work(name):
        def begin(*_, **__):
            started.append(name)
            raise AssertionError(f"{name} began before the output was checked")

        return begin

    monkeypatch.setattr(ddim.experiments.demo, "run_demo", work("the demo's training"))
    for name in ("bench_sampling", "bench_training"):
        monkeypatch.setattr(ddim.experiments.bench, name, work(name))
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "report.html").write_text("an earlier report")
    (demo / "settings.json").write_text(json.dumps({"settings": {"steps": 5, "seed": 0,
                                                                 "device": "cpu"}}))
    code, error = run(capsys, "demo", "-o", demo, "--steps", "7", "--no-progress")
    assert code == 2 and "steps was 5, now 7" in error
    assert (demo / "report.html").read_text() == "an earlier report"
    bench = tmp_path / "bench.json"
    bench.write_text("{}")
    code, error = run(capsys, "bench", "--config", "tiny", "--device", "cpu", "-o", bench)
    assert code == 2 and "no record" in error and bench.read_text() == "{}"
    assert started == []  # refused before training or benchmarking


def test_fid_ref_output_is_claimed(tmp_path, capsys, monkeypatch, write_npz, blobs):
    from ddim import evaluation

    def fake_reference(images, out, *, source, resolution, **_):
        stats = evaluation.FidStats(np.zeros(2), np.eye(2), len(images),
                                    evaluation.network_sha256(), evaluation.CONVENTION, source,
                                    resolution)  # fmt: skip
        evaluation.save_stats(stats, out)
        return stats

    monkeypatch.setattr(evaluation.references, "compute_reference", fake_reference)
    data, out = write_npz(tmp_path / "data.npz", blobs(4)), tmp_path / "ref.npz"
    (tmp_path / ".ref.npz.k1ll3d.tmp").write_bytes(b"left by a killed `fid ref`")
    assert run(capsys, "fid", "ref", data, "-o", out, "--device", "cpu")[0] == 0
    assert not list(tmp_path.glob(".*.tmp"))  # cleaned by the next run
    before = snapshot(tmp_path)
    code, error = run(capsys, "fid", "ref", data, "-o", out, "--n", "3", "--device", "cpu")
    assert code == 2 and "n was null, now 3" in error and snapshot(tmp_path) == before
    assert evaluation.load_stats(out).resolution == 8


# --- where an output may not go ------------------------------------------------------------------


def test_output_paths_that_are_not_what_the_command_writes(tiny_checkpoint, tmp_path, capsys):
    existing = tmp_path / "a-file"
    existing.write_text("keep me")
    code, error = run(capsys, *sample(tiny_checkpoint, existing))
    assert code == 2 and "exists and is not a folder" in error
    assert existing.read_text() == "keep me"
    code, error = run(capsys, *_interpolate(tiny_checkpoint, None, tmp_path))
    assert code == 2 and "is a folder; give a file name" in error
    code, error = run(capsys, *_interpolate(tiny_checkpoint, None, tmp_path / "s.json"))
    assert code == 2 and "give a .png name" in error
    code, error = run(capsys, *sample(tiny_checkpoint, existing / "below"))
    assert code == 2 and "a-file" in error


def test_a_device_node_is_never_replaced(tiny_checkpoint, tmp_path):
    """`-o /dev/null` in a subprocess: refused in one line, and /dev/null stays a device."""
    out = subprocess.run(
        [sys.executable, "-m", "ddim", "trajectory", "--ckpt", str(tiny_checkpoint), "--steps",
         "2", "-o", "/dev/null"], env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "not a regular file" in out.stderr.strip().splitlines()[-1]
    assert Path("/dev/null").is_char_device()


@pytest.mark.parametrize("where", ["folder", "file"])
def test_read_only_places_are_one_line_errors(where, tiny_checkpoint, tmp_path, capsys,
                                              monkeypatch):  # fmt: skip
    """A read-only filesystem (simulated: the tests may run as root, which ignores modes)."""
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "ro"))

    if where == "folder":
        monkeypatch.setattr(Path, "mkdir", read_only)
    else:
        monkeypatch.setattr("tempfile.mkstemp", read_only)
    code, error = run(capsys, *sample(tiny_checkpoint, tmp_path / "ro" / "out"))
    assert code == 2 and "Read-only file system" in error


def test_filesystem_errors_inside_a_command_are_one_line(capsys, monkeypatch):
    def run_(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/somewhere/x.png")

    parser = ddim.cli.build_parser
    monkeypatch.setattr(ddim.cli, "build_parser", lambda: _with_run(parser(), "oracle", run_))
    code, error = run(capsys, "oracle")
    assert code == 2 and error.endswith("cannot use '/somewhere/x.png': Permission denied")


def _with_run(parser, name, function):
    subparsers = next(a for a in parser._actions if a.dest == "command")
    subparsers.choices[name].set_defaults(_run=function)
    return parser


def test_error_messages_are_one_short_line(capsys, monkeypatch):
    def run_(args):
        raise DdimError("first line\nsecond line " + "x" * 5000)

    parser = ddim.cli.build_parser
    monkeypatch.setattr(ddim.cli, "build_parser", lambda: _with_run(parser(), "oracle", run_))
    code, error = run(capsys, "oracle")
    assert code == 2 and "first line second line" in error and "more characters" in error


# --- locks: one writer at a time, and a killed one never blocks ---------------------------------


def test_a_held_output_is_refused_and_a_killed_holder_does_not_block(
    tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "s"
    with folder_lock(out / ".settings.json.lock", "test"):
        code, error = run(capsys, *sample(tiny_checkpoint, out))
        assert code == 2 and f"in use by another ddim process (pid {os.getpid()})" in error
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ddim.files import folder_lock\n"
         "with folder_lock(sys.argv[1], 'x'):\n print('held', flush=True); time.sleep(60)",
         str(out / ".settings.json.lock")], stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    assert run(capsys, *sample(tiny_checkpoint, out))[0] == 2  # held by a live process
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert run(capsys, *sample(tiny_checkpoint, out))[0] == 0  # its lock died with it


def _train(data, run_dir, *extra):
    from conftest import SMALL_TRAINING

    sets = [a for o in SMALL_TRAINING for a in ("--set", o)]
    return ["train", "--config", "tiny", *sets, "--data", data, "--run-dir", run_dir,
            "--max-steps", "1", "--sample-every", "0", "--workers", "0", "--device", "cpu",
            "--cache-dir", Path(run_dir).parent / "cache", *extra]  # fmt: skip


def test_run_directories_belong_to_one_run(tmp_path, capsys, write_npz, blobs):
    data = write_npz(tmp_path / "data.npz", blobs(16))
    run_dir, other = tmp_path / "run", tmp_path / "other"
    assert run(capsys, *_train(data, run_dir))[0] == 0
    assert run(capsys, *_train(data, other))[0] == 0
    before = snapshot(run_dir / "checkpoints")
    code, error = run(capsys, *_train(data, run_dir, "--set", "training.lr=1e-3"))
    assert code == 2 and "already holds checkpoints (newest ckpt-00000001" in error
    code, error = run(capsys, *_train(data, run_dir, "--resume", other, "--max-steps", "2"))
    assert code == 2 and f"--resume {other} continues another run" in error
    assert snapshot(run_dir / "checkpoints") == before
    with folder_lock(run_dir / ".lock", "test"):
        code, error = run(capsys, *_train(data, run_dir, "--resume", run_dir, "--max-steps", "2"))
        assert code == 2 and "in use by another ddim process" in error
    assert snapshot(run_dir / "checkpoints") == before
    assert run(capsys, *_train(data, run_dir, "--resume", run_dir, "--max-steps", "2"))[0] == 0
    assert run(capsys, *_train(data, run_dir, "--overwrite"))[0] == 0
    assert [p.name for p in (run_dir / "checkpoints").glob("*.safetensors")] == [
        "ckpt-00000001.safetensors"]  # fmt: skip


def test_resume_refuses_to_change_the_network_or_schedule(tmp_path, capsys, write_npz, blobs):
    data = write_npz(tmp_path / "data.npz", blobs(16))
    run_dir = tmp_path / "run"
    assert run(capsys, *_train(data, run_dir))[0] == 0
    for override, key in [("model.ch=64", "model.ch"), ("diffusion.beta_end=0.03",
                                                         "diffusion.beta_end")]:  # fmt: skip
        code, error = run(capsys, *_train(data, run_dir, "--resume", run_dir, "--set", override))
        assert code == 2 and f"would change the resumed run's {key}" in error
    argv = _train(data, run_dir, "--resume", run_dir, "--set", "training.n_iters=9")
    assert run(capsys, *argv, "--max-steps", "2")[0] == 0  # the recipe may change


# --- what comes from outside: checkpoints -------------------------------------------------------


def _edit_metadata(src: Path, dst: Path, edit) -> Path:
    """A copy of a checkpoint with its metadata edited as a text editor would (tensors kept)."""
    with safetensors.safe_open(src, framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    edit(meta)
    safetensors.torch.save_file(tensors, dst, metadata={k: json.dumps(v) for k, v in meta.items()})
    return dst


def _set(path: str, value):
    def edit(meta):
        node = meta
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


def _legacy(*edits):
    """Edits applied to a file without metadata_sha256 (written before it existed)."""
    def edit(meta):
        del meta["metadata_sha256"]
        for e in edits:
            e(meta)

    return edit


EDITED = [
    ("architecture", _set("config.model.ch", 64), "metadata fails the checksum"),
    ("image-size", _set("config.data.image_size", 16), "metadata fails the checksum"),
    ("schedule", _set("config.diffusion.beta_end", 0.03), "metadata fails the checksum"),
    ("step", _set("step", 10**6), "metadata fails the checksum"),
    ("legacy-schedule", _legacy(_set("config.diffusion.beta_end", 0.03)),
     "schedule differs from config.diffusion"),
    ("legacy-architecture", _legacy(_set("config.model.ch", 64)), "does not fit the U-Net"),
    ("legacy-image-size", _legacy(_set("config.data.image_size", 16), _set("data.image_size", 16)),
     "it never reaches 4"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), [c[1:] for c in EDITED], ids=[c[0] for c in EDITED])
def test_edited_checkpoint_metadata_is_refused(edit, message, tiny_checkpoint, tmp_path, capsys):
    edited = _edit_metadata(tiny_checkpoint, tmp_path / "edited.safetensors", edit)
    code, error = run(capsys, *sample(edited, tmp_path / "out"))
    assert code == 2 and message in error and "edited.safetensors" in error
    assert not (tmp_path / "out").exists()


def test_a_legacy_checkpoint_without_edits_still_loads(tiny_checkpoint, tmp_path):
    legacy = _edit_metadata(tiny_checkpoint, tmp_path / "old.safetensors", _legacy())
    assert load_checkpoint(legacy).step == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(value, tiny_checkpoint, tmp_path, capsys):
    checkpoint = load_checkpoint(tiny_checkpoint)
    weights = {k: v.clone() for k, v in checkpoint.model_state.items()}
    weights["conv_out.bias"][0] = value
    bad = save_checkpoint(tmp_path / "nan.safetensors", model_state=weights,
                          config=checkpoint.config, step=1)  # fmt: skip
    code, error = run(capsys, *sample(bad, tmp_path / "out"))
    assert code == 2 and "hold NaN or infinite values (first in conv_out.bias)" in error


def test_unreadable_checkpoints_are_reported_on_stderr(tmp_path, capsys, blobs, small_config):
    from ddim.training import latest_checkpoint, train

    first = train(small_config(), tmp_path, images=blobs(16), max_steps=1, sample_every=0,
                  progress=False)  # fmt: skip
    damaged = first.with_name("ckpt-00000002.safetensors")
    damaged.write_bytes(first.read_bytes()[:1000])
    capsys.readouterr()
    assert latest_checkpoint(tmp_path) == first
    captured = capsys.readouterr()
    assert "skipping unreadable checkpoint" in captured.err and captured.out == ""


# --- what comes from outside: FID statistics ----------------------------------------------------


def _stats(path: Path, mu, sigma, n=10, resolution=None):
    from ddim.evaluation import CONVENTION, FidStats, network_sha256, save_stats

    return save_stats(FidStats(np.asarray(mu, float), np.asarray(sigma, float), n,
                               network_sha256(), CONVENTION, "made by hand", resolution), path)


BAD_STATS = [
    ("nan-mu", [np.nan, 0], np.eye(2), 10, "NaN or infinite"),
    ("inf-sigma", [0, 0], [[np.inf, 0], [0, 1]], 10, "NaN or infinite"),
    ("not-psd", [0, 0], [[1, 0], [0, -5]], 10, "not positive semi-definite"),
    ("not-symmetric", [0, 0], [[1, 0.5], [0, 1]], 10, "not symmetric"),
    ("shapes", [0, 0, 0], np.eye(2), 10, "must be (D,) and (D, D)"),
    ("one-image", [0, 0], np.eye(2), 1, "needs >= 2"),
]


@pytest.mark.parametrize(("mu", "sigma", "n", "message"), [c[1:] for c in BAD_STATS],
                         ids=[c[0] for c in BAD_STATS])  # fmt: skip
def test_bad_reference_statistics_are_refused(mu, sigma, n, message, tiny_checkpoint, tmp_path,
                                              capsys):  # fmt: skip
    ref = _stats(tmp_path / "ref.npz", mu, sigma, n)
    code, error = run(capsys, "table", "--ckpt", tiny_checkpoint, "--ref", ref, "--n", "2",
                      "--steps", "2", "--etas", "0", "-o", tmp_path / "t")  # fmt: skip
    assert code == 2 and message in error and "ref.npz" in error
    assert not (tmp_path / "t").exists()


def test_forged_npz_headers_are_refused_before_allocating(tiny_checkpoint, tmp_path, capsys):
    """An .npz whose header declares 9999999 images but holds two: refused, not allocated."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (9999999, 8, 8, 3)}
    )
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("arr_0.npy", header.getvalue() + bytes(2 * 8 * 8 * 3))
    for argv in (["fid", "calc", path, "--ref", path],
                 ["encode", "--ckpt", tiny_checkpoint, "--images", path]):  # fmt: skip
        code, error = run(capsys, *argv)
        assert code == 2 and "declares shape (9999999, 8, 8, 3)" in error, error
    objects = tmp_path / "objects.npz"
    np.savez(objects, arr_0=np.array([{"x": 1}], dtype=object))
    code, error = run(capsys, "fid", "calc", objects, "--ref", objects)
    assert code == 2 and "holds Python objects" in error


def test_images_and_statistics_of_other_sizes_are_not_compared(tiny_checkpoint, tmp_path, capsys,
                                                               write_npz, blobs):  # fmt: skip
    ref = _stats(tmp_path / "ref32.npz", [0, 0], np.eye(2), resolution=32)
    code, error = run(capsys, "table", "--ckpt", tiny_checkpoint, "--ref", ref, "--n", "2",
                      "--steps", "2", "-o", tmp_path / "t")  # fmt: skip
    assert code == 2 and "are 8x8 but" in error and "32x32" in error and "--resolution 8" in error
    images = write_npz(tmp_path / "images.npz", blobs(4))
    code, error = run(capsys, "fid", "calc", images, "--ref", ref, "--device", "cpu")
    assert code == 2 and "are 8x8 but" in error


def test_fid_calc_of_a_sample_folder_scores_its_samples(tiny_checkpoint, tmp_path, capsys,
                                                         monkeypatch):  # fmt: skip
    from ddim import evaluation

    out = tmp_path / "samples"
    assert run(capsys, *sample(tiny_checkpoint, out, "--n", "5"))[0] == 0
    seen = []

    def fake_stats(images, *, source, **_):
        seen.append(tuple(images.shape))
        return evaluation.FidStats(np.zeros(2), np.eye(2), len(images), "h", "c", source)

    monkeypatch.setattr(evaluation.stats_file, "stats_from_images", fake_stats)
    ref = _stats(tmp_path / "ref.npz", [0, 0], np.eye(2), resolution=8)
    assert run(capsys, "fid", "calc", f"{out}/", "--ref", ref, "--device", "cpu")[0] == 0
    assert seen == [(5, 3, 8, 8)]  # samples.npz: five 8x8 images, not grid.png
    assert json.loads((tmp_path / "samples-fid.json").read_text())["n"] == 5


# --- what comes from outside: numbers on the command line ---------------------------------------

BAD_NUMBERS = [
    ("seed-2^63", ["sample", "--seed", str(2**63)], "must lie in [0, 2^63 - 1]"),
    ("seed-negative", ["sample", "--seed", "-1"], "must lie in [0, 2^63 - 1]"),
    ("seed-overflows-with-n", ["sample", "--seed", str(2**63 - 2), "--n", "4"], "2^63 - 1"),
    ("eta-inf", ["sample", "--eta", "inf"], "--eta=inf must be finite"),
    ("eta-nan", ["sample", "--eta", "nan"], "--eta=nan must be finite"),
    ("eta-with-ddpm", ["sample", "--sampler", "ddpm", "--eta", "0.5"], "--eta applies to"),
    ("variance-with-ddim", ["sample", "--variance", "large"], "--variance applies to"),
    ("n-huge", ["sample", "--n", str(10**12)], "GiB of memory, more than this machine's"),
    ("batch-zero", ["sample", "--batch", "0"], "--batch must be >= 1, got 0"),
    ("device-cuda", ["sample", "--device", "cuda"], "--device 'cuda'"),
    ("device-nonsense", ["sample", "--device", "gpu7"], "--device 'gpu7' is not a device"),
    ("encode-batch", ["encode", "--images", "{data}", "--batch", "-3"], "--batch must be >= 1"),
    ("interpolate-num", ["interpolate", "--seeds", "1", "2", "--num", "1"], "--num must be >= 2"),
    ("interpolate-seed", ["interpolate", "--seeds", "1", str(2**64)], "2^63 - 1"),
    ("trajectory-show", ["trajectory", "--show", "0"], "--show must be >= 1"),
    ("table-n-huge", ["table", "--ref", "{data}", "--n", str(10**12)], "GiB of memory"),
    ("table-etas-inf", ["table", "--ref", "{data}", "--etas", "inf"], "--etas=inf"),
    ("oracle-n-negative", ["oracle", "--n", "-5"], "--n must be >= 0, got -5"),
    ("oracle-dim-zero", ["oracle", "--dim", "0"], "--dim must be >= 1, got 0"),
    ("oracle-n-huge", ["oracle", "--n", str(10**15)], "GiB of memory"),
    ("oracle-steps", ["oracle", "--steps", "0"], "got 0"),
    ("bench-repeats-zero", ["bench", "--repeats", "0"], "--repeats must be >= 1, got 0"),
    ("bench-peak-inf", ["bench", "--peak-tflops", "inf"], "--peak-tflops must be a positive"),
    ("demo-steps-zero", ["demo", "--steps", "0"], "--steps must be >= 1, got 0"),
    ("demo-device", ["demo", "--device", "cuda:3"], "--device 'cuda:3'"),
    ("fid-batch-zero", ["fid", "calc", "{data}", "--ref", "{data}", "--batch", "0"], "--batch"),
    ("fid-device", ["fid", "ref", "{data}", "-o", "r.npz", "--device", "cuda"], "--device"),
    ("train-workers", ["train", "--workers", "-1", "--data", "{data}"], "--workers must be >= 0"),
    ("train-device", ["train", "--device", "cuda", "--data", "{data}"], "--device 'cuda'"),
]  # fmt: skip
NEEDS_CKPT = {"sample", "encode", "interpolate", "trajectory", "table"}


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in BAD_NUMBERS],
                         ids=[c[0] for c in BAD_NUMBERS])  # fmt: skip
def test_bad_numbers_are_one_line_errors(argv, message, tiny_checkpoint, tmp_path, capsys,
                                         monkeypatch, write_npz, blobs):  # fmt: skip
    if "cuda" in " ".join(argv) and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.chdir(tmp_path)
    data = write_npz(tmp_path / "data.npz", blobs(2))
    argv = [a.format(data=data) for a in argv]
    if argv[0] in NEEDS_CKPT:
        argv += ["--ckpt", str(tiny_checkpoint)]
    before = snapshot(tmp_path)
    code, error = run(capsys, *argv)
    assert code == 2 and message in error, error
    assert snapshot(tmp_path) == before  # nothing written


def test_oracle_shows_its_progress(capsys):
    assert ddim.cli.main(["oracle", "--steps", "2", "--etas", "0", "--n", "4", "--dim", "2"]) == 0
    assert "oracle table" in capsys.readouterr().err


# --- what comes from outside: image files and archives ------------------------------------------


def test_sixteen_bit_images_are_read_to_eight_bits(tmp_path):
    from ddim.data import load_image_files, open_dataset

    values = (np.arange(64).reshape(8, 8) * 1000 + 300).astype(np.uint16)
    (tmp_path / "gray16").mkdir()
    Image.fromarray(values).save(tmp_path / "gray16" / "a.png")
    with Image.open(tmp_path / "gray16" / "a.png") as image:
        assert image.mode.startswith("I")  # really 16 bits on disk
    expected = (values >> 8).astype(np.uint8)
    with pytest.warns(UserWarning, match="converting L images"):
        item = open_dataset(tmp_path / "gray16")[0]
    assert np.array_equal(item[0].numpy(), expected) and item.float().mean() < 200
    loose = load_image_files([tmp_path / "gray16" / "a.png"], 8)[0]
    assert np.array_equal(loose[1].numpy(), expected)


def _zip_with_flags(path: Path, *, encrypted=False, method=None) -> Path:
    """A zip of one stored PNG whose headers claim encryption or another compression method
    (as an encrypting or Deflate64 archiver writes them)."""
    image = tmp = path.with_suffix(".png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.write(image, "a.png")
    data = bytearray(path.read_bytes())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        if encrypted:
            data[at + flags_at] |= 0x1
        if method is not None:
            data[at + flags_at + 2 : at + flags_at + 4] = method.to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("kind", "message"), [("encrypted", "is encrypted"),
                                               ("deflate64", "method 9 (9 is Deflate64)")])
def test_zip_members_python_cannot_read_are_refused(kind, message, tmp_path, capsys):
    zipped = _zip_with_flags(tmp_path / "data.zip", encrypted=kind == "encrypted",
                             method=9 if kind == "deflate64" else None)  # fmt: skip
    code, error = run(capsys, "fid", "ref", zipped, "-o", tmp_path / "r.npz", "--device", "cpu")
    assert code == 2 and message in error and "a.png in" in error


def test_a_decompression_bomb_is_refused(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    for k in range(2):
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / f"{k}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 - 1)  # as if 64x64 were 90 Mpx
    code, error = run(capsys, "interpolate", "--ckpt", tiny_checkpoint, "--images",
                      tmp_path / "0.png", tmp_path / "1.png", "-o", tmp_path / "s.png")  # fmt: skip
    assert code == 2 and "cannot read image" in error and "decompression bomb" in error


# --- what comes from outside: YAML ----------------------------------------------------------------

YAML_BOMBS = [
    ("alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
     "aliases (*a) are not allowed"),
    ("deep-nesting", "model: " + "[" * 50000 + "]" * 50000 + "\n", "nested more than 16 levels"),
    ("deep-mappings", "".join(" " * i + f"k{i}:\n" for i in range(100)) + " " * 100 + "v: 1\n",
     "nested more than 16 levels"),
    ("not-utf8", b"model:\n  ch: \xff\xfe\n", "not UTF-8 text"),
    ("huge", "# " + "x" * (1 << 21) + "\n", "larger than 1048576 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in YAML_BOMBS],
                         ids=[c[0] for c in YAML_BOMBS])  # fmt: skip
def test_hostile_yaml_is_a_short_error(text, message, tmp_path, capsys, monkeypatch):
    """Refused after a bounded amount of parsing, whatever the document holds: at most
    4 x MAX_DEPTH nodes of it composed (the bombs would expand to 5,184 elements or nest 50,000
    deep; the packaged cifar10 config is 86 nodes)."""
    from ddim.config import files

    composed = {}  # loader -> the nodes it composed; the hostile document is read last
    compose = files._ConfigLoader.compose_node

    def counted(self, parent, index):
        composed[self] = composed.get(self, 0) + 1
        return compose(self, parent, index)

    def hostile_nodes():
        return list(composed.values())[-1] if composed else 0

    monkeypatch.setattr(files._ConfigLoader, "compose_node", counted)
    path = tmp_path / "bomb.yml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, error = run(capsys, "train", "--config", path, "--dry-run")
    assert code == 2 and message in error and len(error) < 300
    assert hostile_nodes() <= 4 * files.MAX_DEPTH, hostile_nodes()
    composed.clear()
    code, error = run(capsys, "train", "--dry-run", "--set", f"model.ch={'[' * 5000}")
    assert code == 2 and "nested more than 16 levels" in error and len(error) < 300
    assert 0 < hostile_nodes() <= 4 * files.MAX_DEPTH, hostile_nodes()


# --- determinism: what is promised --------------------------------------------------------------


def test_image_noise_is_the_same_at_any_batch_size(tiny_checkpoint):
    """With ε ≡ 0 the sampler is elementwise, so what is left is the per-image noise: bit-equal."""
    from ddim.sampling import build_sampler, sample_seeds

    betas = load_checkpoint(tiny_checkpoint).config.diffusion.betas()
    sampler, seeds = build_sampler(betas, 5, eta=1.0), list(range(7))

    def zero(x, t):
        return torch.zeros_like(x)

    one = sample_seeds(zero, sampler, seeds, (3, 8, 8), "cpu")
    split = torch.cat([sample_seeds(zero, sampler, seeds[k : k + 3], (3, 8, 8), "cpu")
                       for k in range(0, 7, 3)])  # fmt: skip
    assert torch.equal(one, split)


def test_images_at_two_batch_sizes_differ_at_most_by_rounding():
    """The promise of docs/reliability.md: the same batch size gives bit-identical images;
    another batch size differs by float32 rounding only, so by at most one uint8 level. Measured
    on the packaged `tiny` network (16x16, reference initialisation), S = 20; run with -s."""
    from ddim.config import load_config
    from ddim.data import to_uint8
    from ddim.network.precision import eps_model_for
    from ddim.network.unet import UNet, reference_init_
    from ddim.sampling import build_sampler, sample_seeds

    config = load_config("tiny")
    torch.manual_seed(0)
    eps = eps_model_for(reference_init_(UNet.from_config(config.model, 16)).eval())
    sampler = build_sampler(config.diffusion.betas(), 20, eta=0.0)
    seeds = list(range(16))

    def images(batch):
        return torch.cat([sample_seeds(eps, sampler, seeds[k : k + batch], (3, 16, 16), "cpu")
                          for k in range(0, 16, batch)])  # fmt: skip

    a, b = images(16), images(3)
    assert torch.equal(a, images(16))
    levels = (to_uint8(a).int() - to_uint8(b).int()).abs()
    print(f"\nbatch 16 vs 3, {len(seeds)} images of 3x16x16, S = 20: max |float difference| "
          f"{(a - b).abs().max():.3g}; uint8: {int((levels > 0).sum())} of {levels.numel()} "
          f"values differ, by at most {int(levels.max())}; batch 16 twice: bit-identical")
    assert (a - b).abs().max() < 1e-3 and levels.max() <= 1
