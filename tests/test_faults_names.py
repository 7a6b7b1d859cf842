"""Records say what ran, commands parse as written, output names are honoured, long work resumes.

- Records are made from the plan that ran: `convert --half` writes the float16 it records, a
  diffusers round trip keeps the config's dataset and model options, sampling records whether
  x_0 was clipped (the sampler's default resolved), `convert` makes the same bytes every time,
  and `--compile` (an execution detail) is not a setting that refuses a folder's images.
- The image count has a spelling torchrun's own parser leaves alone (`--count`).
- An output's suffix is honoured or refused: pictures are PNG or JPEG as named, latents .npz,
  `convert` .safetensors (ours) or a folder without a suffix (diffusers).
- `ddim encode` killed midway resumes: a rerun encodes only the images no shard holds.
docs/reliability.md lists the classes and their guarantees.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors
import torch
from torch.distributed.run import get_args_parser

import ddim.cli
import ddim.sampling.model
from ddim.checkpoint import load_checkpoint, save_checkpoint
from ddim.cli.table import default_skip
from ddim.config import apply_overrides, load_config
from ddim.files import file_output, folder_output, read_record
from ddim.network.unet import UNet

PNG, JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
LOAD = ddim.sampling.model.load_sampling_model  # the loader itself, before any test wraps it


def run(capsys, *argv) -> tuple[int, str]:
    """`ddim *argv` in-process: (exit code, the last line on stderr)."""
    capsys.readouterr()
    code = ddim.cli.main([str(a) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


def files(folder: Path) -> set[str]:
    """Every file under a folder, as relative paths (locks aside)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and not p.name.endswith(".lock")}


def sample(ckpt, out, *extra):
    return ["sample", "--ckpt", ckpt, "--steps", "2", "--batch", "2", "--device", "cpu",
            "--precision", "fp32", "-o", out, *extra]  # fmt: skip


class Killed(Exception):
    """What the tests raise in place of a SIGKILL (not a user error: it propagates)."""


def counting_model(monkeypatch, kill_after: int | None = None) -> list[int]:
    """Make every command's network count its calls (the images of each call in the list) and,
    after `kill_after` calls, raise Killed: the run dies there, as if killed."""
    calls: list[int] = []

    def counting_load(*args, **kwargs):
        model = LOAD(*args, **kwargs)

        def eps_model(x, t):
            if kill_after is not None and len(calls) >= kill_after:
                raise Killed
            calls.append(len(x))
            return model.eps_model(x, t)

        return dataclasses.replace(model, eps_model=eps_model)

    monkeypatch.setattr(ddim.sampling.model, "load_sampling_model", counting_load)
    return calls


# --- records are made from the plan that ran -----------------------------------------------------


def test_convert_half_to_diffusers_writes_the_float16_it_records(tiny_checkpoint, tmp_path,
                                                                 capsys):  # fmt: skip
    out = tmp_path / "hf"
    assert run(capsys, "convert", tiny_checkpoint, out, "--to", "diffusers", "--half")[0] == 0
    with safetensors.safe_open(out / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        dtypes = {f.get_slice(key).get_dtype() for key in f.keys()}  # noqa: SIM118
    assert read_record(folder_output(out, ()))["settings"]["half"] is True
    assert dtypes == {"F16"}
    back = load_checkpoint(out)  # and it loads: float16 weights into the float32 network
    original = load_checkpoint(tiny_checkpoint).weights(use_ema=True)
    for key, value in back.model_state.items():
        assert torch.equal(value, original[key].half())


def _checkpoint_of(path: Path, *overrides: str) -> Path:
    """The tiny checkpoint's network with some config values changed."""
    config = apply_overrides(load_config("tiny"), ["model.ch_mult=[1, 2]", "data.image_size=8",
                                                   "model.attn_resolutions=[4]", *overrides])
    torch.manual_seed(0)
    net = UNet.from_config(config.model, config.data.image_size)
    return save_checkpoint(path, model_state=net.state_dict(), ema_state=net.state_dict(),
                           config=config, step=3)  # fmt: skip


def test_a_diffusers_round_trip_keeps_the_dataset_and_the_model_options(tmp_path, capsys):
    """`data.dataset` decides `ddim table`'s default spacing (quad for CIFAR-10), `model.var_type`
    the DDPM variance: both survive ours -> diffusers -> ours and sampling the folder."""
    ours = _checkpoint_of(tmp_path / "ours.safetensors", "model.var_type=fixedsmall",
                          "model.ema_rate=0.95")
    original = load_checkpoint(ours).config
    assert run(capsys, "convert", ours, tmp_path / "hf")[0] == 0
    assert run(capsys, "convert", tmp_path / "hf", tmp_path / "back.safetensors")[0] == 0
    for back in (load_checkpoint(tmp_path / "hf").config,
                 load_checkpoint(tmp_path / "back.safetensors").config):  # fmt: skip
        assert back.data.dataset == original.data.dataset == "CIFAR10"
        assert default_skip(back) == default_skip(original) == "quad"
        assert back.model == original.model and back.sampling == original.sampling
    code, error = run(capsys, *sample(tmp_path / "hf", tmp_path / "s", "--n", "1", "--steps", "1",
                                      "--sampler", "ddpm"))  # fmt: skip
    assert code == 0, error
    recorded = json.loads((tmp_path / "s" / "sample.json").read_text())
    assert recorded["config"]["data"]["dataset"] == "CIFAR10"
    assert recorded["sampler"]["variance"] == "small"  # fixedsmall, as the original says


@pytest.mark.parametrize("flags, clipped", [([], False), (["--sampler", "ddpm"], True),
                                            (["--clip-x0", "on"], True)])
def test_sampling_records_whether_x0_was_clipped(tiny_checkpoint, tmp_path, capsys, flags,
                                                 clipped):  # fmt: skip
    out = tmp_path / "s"
    assert run(capsys, *sample(tiny_checkpoint, out, "--n", "1", "--steps", "1", *flags))[0] == 0
    assert json.loads((out / "sample.json").read_text())["sampler"]["clip_x0"] is clipped
    assert read_record(folder_output(out, ()))["settings"]["sampler"]["clip_x0"] is clipped


def test_convert_makes_the_same_bytes_every_time(tiny_checkpoint, tmp_path, capsys):
    """The same source converted twice is the same file, so a folder sampled from one copy is
    continued from the other (its record holds the checkpoint's SHA-256)."""
    for name in ("a.safetensors", "b.safetensors"):
        assert run(capsys, "convert", tiny_checkpoint, tmp_path / name, "--half")[0] == 0
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    for name in ("hf-a", "hf-b"):
        assert run(capsys, "convert", tiny_checkpoint, tmp_path / name)[0] == 0
    assert {p: (tmp_path / "hf-a" / p).read_bytes() for p in files(tmp_path / "hf-a")} == \
        {p: (tmp_path / "hf-b" / p).read_bytes() for p in files(tmp_path / "hf-b")}
    out = tmp_path / "s"
    assert run(capsys, *sample(tmp_path / "a.safetensors", out, "--n", "1"))[0] == 0
    code, error = run(capsys, *sample(tmp_path / "b.safetensors", out, "--n", "2"))
    assert code == 0, error


def test_a_compiled_runs_images_are_continued_without_compile(tiny_checkpoint, tmp_path, capsys,
                                                              monkeypatch):  # fmt: skip
    """--compile changes how the network runs, not what it computes: no setting of the folder.
    (torch.compile is replaced by the identity: the test is about the record, not inductor.)"""
    monkeypatch.setattr(torch, "compile", lambda module, **_: module)
    out = tmp_path / "s"
    assert run(capsys, *sample(tiny_checkpoint, out, "--n", "2", "--compile"))[0] == 0
    assert "compiled" in json.loads((out / "sample.json").read_text())["precision"]
    shards = {p: (out / "parts" / p).read_bytes() for p in files(out / "parts")}
    calls = counting_model(monkeypatch)
    code, error = run(capsys, *sample(tiny_checkpoint, out, "--n", "4"))
    assert code == 0, error
    assert sum(calls) == 2 * 2  # the 2 new images at S = 2, none of the compiled run's again
    assert {p: (out / "parts" / p).read_bytes() for p in files(out / "parts")
            if p in shards} == shards  # fmt: skip
    assert "compiled" not in json.loads((out / "sample.json").read_text())["precision"]


# --- a README command parses as written ----------------------------------------------------------


@pytest.mark.parametrize("command, extra", [
    ("sample", []),
    ("encode", ["--images", "data.npz"]),
    ("reconstruct", ["--images", "data.npz"]),
])  # fmt: skip
def test_torchrun_leaves_the_count_flag_to_ddim(command, extra):
    """torchrun's parser takes `--n` for its own --nnodes/--nproc-per-node (argparse prefix
    matching); `--count` passes through to ddim, which reads it as the image count."""
    argv = ["--nproc_per_node", "2", "-m", "ddim", command, "--ckpt", "tiny.safetensors",
            *extra, "--count", "8", "-o", "out"]  # fmt: skip
    with pytest.raises(SystemExit):
        get_args_parser().parse_args([*argv[:5], *extra, "--n", "8"])
    parsed = get_args_parser().parse_args(argv)
    assert parsed.module and parsed.training_script == "ddim"
    assert parsed.nproc_per_node == "2" and parsed.nnodes == "1:1"
    args = ddim.cli.build_parser().parse_args(parsed.training_script_args)
    assert args.command == command and args.n == 8
    assert ddim.cli.build_parser().parse_args([command, *extra, "--n", "8"]).n == 8  # the alias


def test_the_torchrun_command_runs_as_written_with_count(tiny_checkpoint, tmp_path):
    """`torchrun --nproc_per_node 2 -m ddim sample … --count 4` for real: two CPU processes
    (gloo) make the images one process makes (batch 1: the same arithmetic per image)."""
    common = ["sample", "--ckpt", str(tiny_checkpoint), "--count", "4", "--steps", "2", "--batch",
              "1", "--device", "cpu", "--precision", "fp32"]  # fmt: skip
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ddim", *common, "-o", str(tmp_path / "two")],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert ddim.cli.main([*common, "-o", str(tmp_path / "one")]) == 0
    assert json.loads((tmp_path / "two" / "sample.json").read_text())["ranks"] == 2
    with np.load(tmp_path / "two" / "samples.npz") as a, np.load(tmp_path / "one" /
                                                                 "samples.npz") as b:
        assert a["arr_0"].shape == (4, 8, 8, 3) and np.array_equal(a["arr_0"], b["arr_0"])


# --- output names are honoured or refused --------------------------------------------------------


def picture_commands(ckpt, out):
    """The commands that write one picture, each to `out`."""
    model = ["--ckpt", ckpt, "--device", "cpu", "--steps", "1"]
    return {
        "interpolate": ["interpolate", *model, "--seeds", "1", "2", "--num", "3", "-o", out],
        "trajectory": ["trajectory", *model, "--show", "1", "-o", out],
    }


@pytest.mark.parametrize("command", ["interpolate", "trajectory"])
@pytest.mark.parametrize("name, magic", [("x.png", PNG), ("x.jpg", JPEG), ("x.JPEG", JPEG)])
def test_a_picture_is_written_in_the_format_its_name_says(tiny_checkpoint, tmp_path, capsys,
                                                          command, name, magic):  # fmt: skip
    out = tmp_path / name
    code, error = run(capsys, *picture_commands(tiny_checkpoint, out)[command])
    assert code == 0, error
    assert out.read_bytes().startswith(magic)
    assert (tmp_path / "x.json").is_file()


@pytest.mark.parametrize("command", ["interpolate", "trajectory"])
@pytest.mark.parametrize("name", ["x.gif", "x.webp", "x"])
def test_a_picture_name_of_another_format_is_refused_before_any_work(
    tiny_checkpoint, tmp_path, capsys, monkeypatch, command, name
):
    counting_model(monkeypatch, kill_after=0)  # the network is never called
    code, error = run(capsys, *picture_commands(tiny_checkpoint, tmp_path / name)[command])
    assert code == 2 and ".png" in error and ".jpg" in error and f"{name}'" in error, error
    assert files(tmp_path) == set()


def test_save_grid_writes_the_format_its_name_says(tmp_path):
    from ddim.errors import DdimError
    from ddim.images import save_grid

    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    assert save_grid(images, tmp_path / "a.jpg").read_bytes().startswith(JPEG)
    assert save_grid(images, tmp_path / "a.png").read_bytes().startswith(PNG)
    with pytest.raises(DdimError, match=r"\.tif"):
        save_grid(images, tmp_path / "a.tif")


def test_encode_refuses_an_output_that_is_not_npz(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    np.savez(tmp_path / "data.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    counting_model(monkeypatch, kill_after=0)
    code, error = run(capsys, "encode", "--ckpt", tiny_checkpoint, "--images",
                      tmp_path / "data.npz", "--steps", "1", "-o", tmp_path / "x.png")
    assert code == 2 and "x.png'" in error and ".npz" in error, error
    assert files(tmp_path) == {"data.npz"}


@pytest.mark.parametrize("name, to, fix", [
    ("model.pt", [], ".safetensors"),
    ("model.pt", ["--to", "diffusers"], "without a suffix"),
    ("model.safetensors", ["--to", "diffusers"], "without a suffix"),
    ("folder", ["--to", "ddim"], ".safetensors"),
])  # fmt: skip
def test_convert_refuses_a_destination_whose_suffix_is_not_its_kind(tiny_checkpoint, tmp_path,
                                                                    capsys, name, to, fix):
    code, error = run(capsys, "convert", tiny_checkpoint, tmp_path / name, *to)
    assert code == 2 and name in error and fix in error, error
    assert files(tmp_path) == set() and not list(tmp_path.iterdir())


def test_convert_refuses_verify_where_it_would_check_nothing(tiny_checkpoint, tmp_path, capsys):
    """--verify compares a diffusers export with diffusers: for our format it did nothing, and
    said nothing of it."""
    code, error = run(capsys, "convert", tiny_checkpoint, tmp_path / "x.safetensors", "--verify")
    assert code == 2 and "--verify" in error and "--to diffusers" in error, error
    assert not list(tmp_path.iterdir())


# --- long work resumes ---------------------------------------------------------------------------


def encode(ckpt, data, out):
    return ["encode", "--ckpt", ckpt, "--device", "cpu", "--precision", "fp32", "--images", data,
            "--steps", "2", "--batch", "2", "-o", out]  # fmt: skip


def test_a_killed_encode_resumes_with_the_images_it_had_not_encoded(tiny_checkpoint, tmp_path,
                                                                    capsys, monkeypatch):
    """6 images in batches of 2 at S = 2: the network runs twice per batch. Killed in the third
    batch, the rerun encodes only that batch, and its latents are those of a run never killed."""
    data = tmp_path / "data.npz"
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(data, arr_0=pixels)
    calls = counting_model(monkeypatch)
    assert run(capsys, *encode(tiny_checkpoint, data, tmp_path / "whole.npz"))[0] == 0
    assert len(calls) == 3 * 2

    counting_model(monkeypatch, kill_after=2 * 2)
    with pytest.raises(Killed):
        ddim.cli.main([str(a) for a in encode(tiny_checkpoint, data, tmp_path / "z.npz")])
    assert not (tmp_path / "z.npz").exists()
    calls = counting_model(monkeypatch)
    code, error = run(capsys, *encode(tiny_checkpoint, data, tmp_path / "z.npz"))
    assert code == 0, error
    assert calls == [2, 2]  # one batch of 2 images, S = 2: the two batches done are not redone
    with np.load(tmp_path / "whole.npz") as whole, np.load(tmp_path / "z.npz") as resumed:
        assert resumed["latents"].tobytes() == whole["latents"].tobytes()
        assert resumed["indices"].tolist() == whole["indices"].tolist() == list(range(6))
    assert files(tmp_path) == {"data.npz", "whole.npz", "whole.npz.settings.json", "z.npz",
                               "z.npz.settings.json"}  # the shards are gone once it is whole
    assert read_record(file_output(tmp_path / "z.npz"))["command"] == "encode"


def test_encode_overwrite_does_not_continue_another_settings_shards(tiny_checkpoint, tmp_path,
                                                                    capsys, monkeypatch):
    data = tmp_path / "data.npz"
    np.savez(data, arr_0=np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), np.uint8))
    counting_model(monkeypatch, kill_after=2)
    with pytest.raises(Killed):
        ddim.cli.main([str(a) for a in encode(tiny_checkpoint, data, tmp_path / "z.npz")])
    other = [*encode(tiny_checkpoint, data, tmp_path / "z.npz"), "--steps", "1"]
    calls = counting_model(monkeypatch)
    code, error = run(capsys, *other)
    assert code == 2 and "steps was 2, now 1" in error, error
    assert run(capsys, *other, "--overwrite")[0] == 0
    assert calls == [2, 2]  # both batches at S = 1: nothing of the S = 2 run continued
