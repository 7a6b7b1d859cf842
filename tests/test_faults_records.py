"""What a checkpoint records is what runs: a conflicting config is refused naming the difference,
a diffusers round trip samples the same images, scheduler options we do not implement are
refused, an inferred network says so, and raw weights a file does not hold are not substituted.
docs/reliability.md lists the classes and their guarantees."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import safetensors.torch
import torch

import ddim
import ddim.cli
from ddim.checkpoint import (
    bundled_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    provenance,
    save_checkpoint,
)
from ddim.checkpoint.diffusers import export_diffusers
from ddim.config import apply_overrides, dump_config, load_config, sampling_differences
from ddim.errors import DdimError
from ddim.network.unet import UNet

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run(capsys, *argv) -> tuple[int, str]:
    """`ddim *argv` in-process: (exit code, the last line on stderr)."""
    capsys.readouterr()
    code = ddim.cli.main([str(a) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


def images_of(checkpoint, seeds=(0, 1), steps=3) -> torch.Tensor:
    """What a checkpoint samples with its own config's defaults (skip, η), as uint8."""
    config = checkpoint.config
    net = model_from_checkpoint(checkpoint)
    gens = ddim.generators_from_seeds(seeds)
    shape = (len(seeds), config.model.in_channels, *(config.data.image_size,) * 2)
    with torch.no_grad():
        x = ddim.sample(net, ddim.randn(shape, gens), config.diffusion.betas(), steps=steps,
                        skip=config.sampling.skip, eta=config.sampling.eta, generator=gens)
    return ddim.to_uint8(x)


@pytest.fixture(scope="module")
def recorded(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint).config


# --- a config given for our checkpoint must agree with the recorded one -------------------------

CONFLICTS = [  # (overrides of the recorded config, what the refusal names)
    (["data.image_size=16", "model.attn_resolutions=[8]"],  # the same weights fit: 16 px images
     "model.attn_resolutions is [4] there, [8] given; data.image_size is 8 there, 16 given"),
    (["diffusion.beta_end=0.03"], "diffusion.beta_end is 0.02 there, 0.03 given"),
    (["diffusion.beta_schedule=quad"], "diffusion.beta_schedule is 'linear' there"),
    (["sampling.skip=quad"], "sampling.skip is 'uniform' there, 'quad' given"),
    (["sampling.eta=1"], "sampling.eta is 0.0 there, 1.0 given"),
    (["model.ch=64"], "model.ch is 32 there, 64 given"),
    (["model.var_type=fixedsmall"], "model.var_type is 'fixedlarge' there, 'fixedsmall' given"),
    (["model.ema=false"], "model.ema is True there, False given"),
]


@pytest.mark.parametrize(("overrides", "message"), CONFLICTS, ids=[c[0][0] for c in CONFLICTS])
def test_a_config_that_differs_from_the_recorded_one_is_refused(
    overrides, message, tiny_checkpoint, recorded
):
    given = apply_overrides(recorded, overrides)
    with pytest.raises(DdimError) as error:
        load_checkpoint(tiny_checkpoint, config=given)
    assert message in str(error.value) and "tiny.safetensors" in str(error.value)


def test_a_config_that_agrees_is_accepted_and_the_recorded_one_kept(tiny_checkpoint, recorded):
    assert load_checkpoint(tiny_checkpoint, config=recorded).config == recorded
    # values that do not decide the images: the recipe, the data's place, the batch size
    other = apply_overrides(recorded, ["training.lr=0.1", "training.seed=9", "data.path=/x",
                                       "data.subdir=test", "sampling.batch_size=3",
                                       "model.dropout=0.3"])
    assert sampling_differences(recorded, other) == []
    assert load_checkpoint(tiny_checkpoint, config=other).config == recorded


CONFIG_COMMANDS = {  # every command that samples a checkpoint: its arguments at tiny size
    "sample": ["--n", "1", "--steps", "1", "-o", "out"],
    "encode": ["--images", "data.npz", "--steps", "1", "-o", "l.npz"],
    "reconstruct": ["--images", "data.npz", "--n", "1", "--steps", "1", "-o", "out"],
    "interpolate": ["--seeds", "1", "2", "--num", "2", "--steps", "1", "-o", "i.png"],
    "trajectory": ["--steps", "1", "--show", "1", "-o", "t.png"],
    "table": ["--ref", "data.npz", "--n", "2", "--steps", "1", "--etas", "0", "-o", "out"],
}


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_a_conflicting_config_is_one_line_before_any_output(command, tiny_checkpoint, recorded,
                                                            tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.npz").write_bytes(b"not read: the checkpoint is refused first")
    yml = tmp_path / "c16.yml"
    yml.write_text(dump_config(apply_overrides(
        recorded, ["data.image_size=16", "model.attn_resolutions=[8]"])))
    capsys.readouterr()
    code = ddim.cli.main([command, "--ckpt", str(tiny_checkpoint), "--config", str(yml),
                          "--device", "cpu", *CONFIG_COMMANDS[command]])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"ddim {command}: error: ") and "tiny.safetensors" in lines[0]
    assert "records its config, and the config given differs" in lines[0]
    assert "data.image_size is 8 there, 16 given" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c16.yml", "data.npz"]  # nothing made


def test_convert_with_a_conflicting_config_writes_nothing(tiny_checkpoint, recorded, tmp_path,
                                                          capsys):
    yml = tmp_path / "other-schedule.yml"
    yml.write_text(dump_config(apply_overrides(recorded, ["diffusion.beta_end=0.03"])))
    for destination in ("out.safetensors", "hf"):
        code, error = run(capsys, "convert", tiny_checkpoint, tmp_path / destination,
                          "--config", yml)
        assert code == 2 and "diffusion.beta_end is 0.02 there, 0.03 given" in error
        assert not (tmp_path / destination).exists()
    same = tmp_path / "same.yml"
    same.write_text(dump_config(recorded))
    assert run(capsys, "convert", tiny_checkpoint, tmp_path / "ok.safetensors",
               "--config", same)[0] == 0
    assert load_checkpoint(tmp_path / "ok.safetensors").config == recorded


def test_a_foreign_file_still_takes_the_config(tmp_path):
    config = apply_overrides(load_config("tiny"), ["data.image_size=32",
                                                   "model.attn_resolutions=[16]"])
    torch.manual_seed(0)
    net = UNet.from_config(config.model, 32)
    torch.save(net.state_dict(), tmp_path / "model.ckpt")
    given = apply_overrides(config, ["diffusion.beta_end=0.03"])
    checkpoint = load_checkpoint(tmp_path / "model.ckpt", config=given)
    assert checkpoint.config == given and "inferred" not in checkpoint.meta
    assert provenance(checkpoint)["config"] == "given"


# --- a network inferred from bare weights says so -----------------------------------------------


def test_an_inferred_network_is_noted_in_the_record_and_as_a_warning(tmp_path):
    config = load_config("tiny")
    net = UNet.from_config(config.model, 16)
    safetensors.torch.save_file(net.state_dict(), tmp_path / "bare.safetensors")
    with pytest.warns(UserWarning, match="bare.safetensors records no config: its network was "
                                         "inferred from the weights' shapes"):
        checkpoint = load_checkpoint(tmp_path / "bare.safetensors")
    record = provenance(checkpoint)
    assert record["config"] == "inferred" and "paper's schedule is assumed" in record["inferred"]
    assert record["weights"] == "unlabelled" and record["kind"] == "state_dict"
    folder = export_diffusers(load_checkpoint(tmp_path / "bare.safetensors", config=config),
                              tmp_path / "hf")
    (folder / "scheduler" / "scheduler_config.json").unlink()  # a unet without its scheduler
    with pytest.warns(UserWarning, match="network was read from unet/config.json"):
        assert provenance(load_checkpoint(folder))["config"] == "inferred"


def test_the_command_line_says_it_in_one_line(tmp_path):
    config = load_config("tiny")
    safetensors.torch.save_file(UNet.from_config(config.model, 16).state_dict(),
                                tmp_path / "bare.safetensors")
    result = subprocess.run(
        [sys.executable, "-m", "ddim", "sample", "--ckpt", str(tmp_path / "bare.safetensors"),
         "--n", "1", "--steps", "1", "--device", "cpu", "-o", str(tmp_path / "s")],
        env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "records no config" in line]
    assert len(notes) == 1 and notes[0].startswith("ddim sample: warning: bare.safetensors")
    assert "warnings.warn" not in result.stderr and "UserWarning" not in result.stderr


# --- raw weights of a file that holds one set ---------------------------------------------------


def test_raw_weights_of_a_file_holding_only_ema_weights_are_refused(tmp_path, capsys):
    bundled = load_checkpoint(bundled_checkpoint())
    assert not bundled.has_ema and bundled.weights_label() == "ema"
    with pytest.raises(DdimError, match="holds its EMA weights only: there are no raw weights"):
        model_from_checkpoint(bundled, use_ema=False)
    code, error = run(capsys, "sample", "--raw", "--n", "1", "--steps", "1", "--device", "cpu",
                      "-o", tmp_path / "s")
    assert code == 2 and "holds its EMA weights only" in error and not (tmp_path / "s").exists()


def test_raw_weights_of_an_unlabelled_file_are_refused_and_both_sets_are_labelled(
    tiny_checkpoint, tmp_path, capsys
):
    two = load_checkpoint(tiny_checkpoint)
    assert two.has_ema and (two.weights_label(True), two.weights_label(False)) == ("ema", "raw")
    torch.save(two.model_state, tmp_path / "plain.ckpt")
    with pytest.warns(UserWarning):
        plain = load_checkpoint(tmp_path / "plain.ckpt")
    assert provenance(plain)["weights"] == "unlabelled"
    with pytest.raises(DdimError, match="one set of weights, not labelled raw or EMA"):
        provenance(plain, use_ema=False)
    # an official ckpt.pth without its EMA element holds raw weights: both requests say so
    torch.save([two.model_state, {}, 1, 5], tmp_path / "ckpt.pth")
    with pytest.warns(UserWarning):
        official = load_checkpoint(tmp_path / "ckpt.pth")
    assert official.weights_label(True) == official.weights_label(False) == "raw"
    # a float16 export of one set records which it is, and keeps saying it
    out = tmp_path / "half.safetensors"
    assert run(capsys, "convert", tiny_checkpoint, out, "--half")[0] == 0
    assert load_checkpoint(out).weights_label() == "ema"
    assert run(capsys, "convert", out, tmp_path / "again.safetensors", "--raw")[0] == 2


# --- diffusers: the round trip keeps what samples, options we do not implement are refused ------


@pytest.mark.parametrize("overrides", [
    ["sampling.skip=quad"],
    ["sampling.skip=trailing", "sampling.eta=0.5", "sampling.steps=3"],
    ["sampling.skip=uniform", "diffusion.beta_schedule=quad"],
])  # fmt: skip
def test_ours_to_diffusers_and_back_samples_the_same_images(overrides, tiny_checkpoint, tmp_path):
    source = load_checkpoint(tiny_checkpoint)
    config = apply_overrides(source.config, overrides)
    path = save_checkpoint(tmp_path / "a.safetensors", model_state=source.model_state,
                           ema_state=source.ema_state, config=config, step=3)
    ours = load_checkpoint(path)
    back = load_checkpoint(export_diffusers(ours, tmp_path / "hf"))
    assert back.config.sampling == config.sampling
    assert sampling_differences(config, back.config) == []
    assert torch.equal(images_of(back), images_of(ours))
    assert back.weights_label() == "ema"  # the export says which weights it holds


SCHEDULER_OPTIONS = [  # (changes to our exported scheduler config, what the refusal names)
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True"),
    ({"clip_sample": True}, "clip_sample=True is not what ddim's samplers do"),
    ({"thresholding": True}, "thresholding=True"),
    ({"timestep_spacing": "linspace"}, "timestep_spacing='linspace' is not implemented"),
    ({"prediction_type": "v_prediction"}, "prediction_type='v_prediction'"),
    ({"steps_offset": 1}, "steps_offset=1"),
    ({"set_alpha_to_one": False}, "set_alpha_to_one=False"),
    ({"trained_betas": [0.1] * 1000}, "trained_betas="),
    ({"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule='squaredcos_cap_v2'"),
    ({"_class_name": "PNDMScheduler"}, "a PNDMScheduler"),
    ({"_class_name": "DDPMScheduler", "clip_sample": True, "variance_type": "fixed_large"},
     "variance_type='fixed_large'"),
    ({"_class_name": "DDPMScheduler", "clip_sample": False}, "clip_sample=False"),
    ({"timestep_spacing": "trailing"}, "disagrees with _ddim_sampling.skip='uniform'"),
]


@pytest.mark.parametrize(("changes", "message"), SCHEDULER_OPTIONS,
                         ids=[next(reversed(c)) for c, _ in SCHEDULER_OPTIONS])  # fmt: skip
def test_scheduler_options_we_do_not_implement_are_refused(
    changes, message, tiny_checkpoint, tmp_path
):
    folder = export_diffusers(load_checkpoint(tiny_checkpoint), tmp_path / "hf")
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    with pytest.raises(DdimError) as error:
        load_checkpoint(folder)
    assert message in str(error.value) and "scheduler_config.json" in str(error.value)


def test_schedulers_we_implement_load_as_diffusers_writes_them(tiny_checkpoint, tmp_path):
    """A DDPM pipeline's scheduler as released (clipping, small variance), and a DDIM scheduler
    that leaves its options to diffusers' defaults except clipping."""
    folder = export_diffusers(load_checkpoint(tiny_checkpoint), tmp_path / "hf")
    path = folder / "scheduler" / "scheduler_config.json"
    for scheduler in (
        {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
         "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000,
         "trained_betas": None, "variance_type": "fixed_small"},
        {"_class_name": "DDIMScheduler", "clip_sample": False, "timestep_spacing": "trailing"},
    ):  # fmt: skip
        path.write_text(json.dumps(scheduler))
        config = load_checkpoint(folder).config
        assert config.diffusion == load_config("tiny").diffusion
    assert config.sampling.skip == "trailing"


# --- records say what ran, not what a flag asked ------------------------------------------------


def test_records_say_which_weights_ran_and_where_the_config_came_from(
    tiny_checkpoint, recorded, tmp_path, capsys
):
    torch.save(load_checkpoint(tiny_checkpoint).model_state, tmp_path / "plain.ckpt")
    yml = tmp_path / "tiny.yml"
    yml.write_text(dump_config(recorded))
    cases = [  # (checkpoint and flags, the provenance its outputs record)
        ([tiny_checkpoint], {"kind": "ddim", "weights": "ema", "config": "recorded"}),
        ([tiny_checkpoint, "--raw"], {"kind": "ddim", "weights": "raw", "config": "recorded"}),
        ([tmp_path / "plain.ckpt", "--config", yml],
         {"kind": "state_dict", "weights": "unlabelled", "config": "given"}),
    ]  # fmt: skip
    for k, (flags, expected) in enumerate(cases):
        out = tmp_path / f"s{k}"
        code, error = run(capsys, "sample", "--ckpt", *flags, "--n", "1", "--steps", "1",
                          "--device", "cpu", "-o", out)  # fmt: skip
        assert code == 0, error
        assert json.loads((out / "sample.json").read_text())["provenance"] == expected
        assert json.loads((out / "settings.json").read_text())["settings"]["provenance"] \
            == expected
        traj = tmp_path / f"t{k}.png"
        assert run(capsys, "trajectory", "--ckpt", *flags, "--steps", "1", "--show", "1",
                   "--device", "cpu", "-o", traj)[0] == 0  # fmt: skip
        assert json.loads(traj.with_suffix(".json").read_text())["provenance"] == expected
    code, error = run(capsys, "sample", "--ckpt", tmp_path / "plain.ckpt", "--config", yml,
                      "--raw", "--n", "1", "--device", "cpu", "-o", tmp_path / "refused")
    assert code == 2 and "not labelled raw or EMA" in error
    assert not (tmp_path / "refused").exists()


def test_an_inferred_network_is_in_the_record_and_a_copy_is_the_same_model(tmp_path, capsys):
    """The note names the file, so the settings a rerun compares leave it out: a renamed copy
    of the same bare weights resumes the same folder."""
    net = UNet.from_config(load_config("tiny").model, 16)
    safetensors.torch.save_file(net.state_dict(), tmp_path / "bare.safetensors")
    (tmp_path / "copy.safetensors").write_bytes((tmp_path / "bare.safetensors").read_bytes())
    out = tmp_path / "s"
    for name, n in (("bare", "1"), ("copy", "2")):
        with pytest.warns(UserWarning, match="records no config"):
            code, error = run(capsys, "sample", "--ckpt", tmp_path / f"{name}.safetensors",
                              "--n", n, "--steps", "1", "--device", "cpu", "-o", out)
        assert code == 0, error
    record = json.loads((out / "sample.json").read_text())
    assert record["provenance"]["config"] == "inferred" and record["images_made_this_run"] == 1
    assert record["provenance"]["inferred"].startswith("copy.safetensors records no config")
    settings = json.loads((out / "settings.json").read_text())["settings"]
    assert settings["provenance"] == {"kind": "state_dict", "weights": "unlabelled",
                                      "config": "inferred"}
