"""A sampling run is decided once: the settings come from the arguments and the config's
defaults, τ is computed once per S and η checked once per command, a new solver plugs in with
one step function and one SAMPLERS entry, and errors name arguments (the CLI: flags)."""

import json
import sys

import numpy as np
import pytest
import torch

import ddim.diffusion.samplers as samplers
import ddim.diffusion.schedule as schedule
from ddim.cli import in_flags, main
from ddim.config import apply_overrides, load_config
from ddim.data import to_uint8
from ddim.errors import DdimError
from ddim.sampling import settings as st

CONFIG = apply_overrides(load_config("tiny"), ["sampling.steps=7", "sampling.skip=quad",
                                               "sampling.eta=0.25", "sampling.batch_size=3"])


def test_what_is_not_given_is_the_configs():
    s = st.sampling_settings(CONFIG)
    sampler = s.sampler
    assert (sampler.name, sampler.steps, sampler.skip, sampler.option) == (
        "ddim", 7, "quad", ("eta", 0.25))
    assert (s.batch, s.shape, sampler.clip) == (3, (3, 16, 16), False)
    betas = CONFIG.diffusion.betas()
    tau = schedule.timesteps(1000, 7, "quad")
    assert sampler.timesteps == tuple(tau) and sampler.network_calls == len(tau)
    assert sampler.plan == tuple(samplers.ddim_plan(betas, tau, 0.25))
    asked = st.sampling_settings(CONFIG, steps=[2, 5], skip="uniform", eta=1.0, batch=8,
                                 clip_x0=True)  # fmt: skip
    assert [x.steps for x in asked.samplers] == [2, 5] and asked.batch == 8
    assert all(x.skip == "uniform" and x.option == ("eta", 1.0) and x.clip for x in asked.samplers)


def test_label_names_the_dropped_repeats():
    """quad at S = 50 repeats t = 0, so it walks 49 timesteps; the label says both."""
    quad = st.sampling_settings(CONFIG, steps=50).sampler
    assert quad.network_calls == 49 and quad.label == "S=50, 49 calls"
    assert st.sampling_settings(CONFIG, steps=20, skip="uniform").sampler.label == "S=20"


def test_records_keep_their_shape():
    ddim = st.sampling_settings(CONFIG, steps=4).sampler
    # clip_x0 not asked: the record says what runs, the sampler's default (DDIM: off)
    assert ddim.record() == {"steps": 4, "skip": "quad", "eta": 0.25, "kind": "ddim",
                             "clip_x0": False}  # fmt: skip
    ddpm = st.sampling_settings(CONFIG, sampler="ddpm", steps=4, clip_x0=False).sampler
    assert ddpm.record() == {"steps": 4, "skip": "quad", "variance": "large", "kind": "ddpm",
                             "clip_x0": False}  # fmt: skip
    assert not ddpm.clip and st.sampling_settings(CONFIG, sampler="ddpm").sampler.clip


@pytest.mark.parametrize("arguments, message, argument", [
    ({"sampler": "ddpm", "eta": 0.5}, "eta applies to the ddim sampler only, not ddpm", "eta"),
    ({"variance": "large"}, "variance applies to the ddpm sampler only, not ddim", "variance"),
    ({"sampler": "euler"}, "sampler 'euler' is not one of ddim, ddpm, dpmpp-2m", "sampler"),
    ({"sampler": "dpmpp-2m", "eta": 0.0}, "eta applies to the ddim sampler only", "eta"),
    ({"eta": float("nan")}, "eta=nan must be finite and >= 0", "eta"),
    ({"sampler": "ddpm", "variance": "big"}, "variance must be 'small' or 'large'", "variance"),
    ({"steps": 0}, "steps must be between 1 and T = 1000, got 0", "steps"),
    ({"batch": 0}, "batch must be >= 1, got 0", "batch"),
])  # fmt: skip
def test_bad_arguments_are_errors_that_name_them(arguments, message, argument):
    with pytest.raises(DdimError, match=message.replace("(", r"\(")) as error:
        st.sampling_settings(CONFIG, **arguments)
    assert error.value.argument == argument and not str(error.value).startswith("--")


def test_the_command_line_names_the_flag_in_the_arguments_place():
    flags = {"batch": "--batch", "etas": "--etas", "out": "--out"}
    assert in_flags(DdimError("batch must be >= 1, got 0", argument="batch"), flags) == (
        "--batch must be >= 1, got 0")
    assert in_flags(DdimError("eta=inf must be finite", argument="eta"), flags) == (
        "--etas=inf must be finite")  # a list flag stands for its singular argument
    assert in_flags(DdimError("steps must be >= 1", argument="steps"), flags) == (
        "steps must be >= 1")  # no such flag: the message as it is
    assert in_flags(DdimError("a bad file"), flags) == "a bad file"


@pytest.fixture
def counted(monkeypatch):
    """Every call of `timesteps` and of `check_eta`, wherever the package imported them."""
    calls = {"timesteps": [], "check_eta": []}
    for name, real in (("timesteps", schedule.timesteps), ("check_eta", samplers.check_eta)):
        def counting(*args, _name=name, _real=real, **kwargs):
            calls[_name].append(args[1] if _name == "timesteps" else args[0])
            return _real(*args, **kwargs)

        for module in [m for n, m in sys.modules.items() if n.split(".")[0] == "ddim"]:
            if getattr(module, name, None) is real:
                monkeypatch.setattr(module, name, counting)
    return calls


def _fake_fid(monkeypatch):
    """Reference statistics that pass the checks, and an FID that only counts the images."""
    from ddim import evaluation

    stats = evaluation.FidStats(np.zeros(4), np.eye(4), 10, evaluation.network_sha256(),
                                evaluation.CONVENTION, "fake")  # fmt: skip
    evaluation.save_stats(stats, "ref.npz")
    monkeypatch.setattr(evaluation.scoring, "compute_scores",
                        lambda images, *a, **k: evaluation.Scores(len(list(images)), None))


@pytest.mark.parametrize("command, per_s", [
    (["sample", "--n", "2", "--steps", "3", "--eta", "0.3", "-o", "out"], [3]),
    (["sample", "--n", "2", "--sampler", "ddpm", "--steps", "3", "-o", "out"], [3]),
    (["encode", "--images", "data.npz", "--steps", "3", "-o", "l.npz"], [3]),
    (["reconstruct", "--images", "data.npz", "--steps", "2", "3", "-o", "out"], [2, 3]),
    (["interpolate", "--seeds", "1", "2", "--num", "3", "--steps", "3", "-o", "s.png"], [3]),
    (["trajectory", "--steps", "2", "3", "-o", "t.png"], [2, 3]),
    (["table", "--ref", "ref.npz", "--n", "2", "--steps", "2", "3", "--etas", "0.3", "1",
      "--sigma-hat", "--dpmpp-2m", "-o", "out"], [2, 3]),
])  # fmt: skip
def test_tau_is_computed_once_per_s_and_eta_checked_once(
    command, per_s, counted, tiny_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    np.savez("data.npz", arr_0=np.zeros((3, 8, 8, 3), np.uint8))
    if command[0] == "table":
        _fake_fid(monkeypatch)
    assert main([*command, "--ckpt", str(tiny_checkpoint), "--precision", "fp32"]) == 0
    assert counted["timesteps"] == per_s
    # η is checked where its plan is built: once, or once per column of the table
    asked = "0.3" in command
    assert counted["check_eta"].count(0.3) == (len(per_s) if command[0] == "table" else asked)


def test_a_new_solver_is_one_step_function_and_one_entry(tiny_checkpoint, tmp_path, monkeypatch):
    """A two-step solver in miniature: its step sees the step before and the x_0 it predicted."""
    seen = []

    def second_order_step(x_t, eps, step, noise=None, *, clip_x0=False, previous=None):
        seen.append((step.t_from, None if previous is None else previous.step.t_from))
        return samplers.generalized_step(x_t, eps, step, noise, clip_x0=clip_x0)

    entry = st.SamplerEntry(plan=lambda betas, tau: samplers.ddim_plan(betas, tau, 0.0),
                            update=second_order_step)  # fmt: skip
    monkeypatch.setitem(st.SAMPLERS, "two-step", entry)
    common = ["--ckpt", str(tiny_checkpoint), "--n", "2", "--steps", "3", "--precision", "fp32"]
    assert main(["sample", *common, "--sampler", "two-step", "-o", str(tmp_path / "a")]) == 0
    assert seen == [(666, None), (333, 666), (0, 333)]  # one batch of two images
    assert main(["sample", *common, "--eta", "0", "-o", str(tmp_path / "b")]) == 0
    a, b = (np.load(tmp_path / x / "samples.npz")["arr_0"] for x in "ab")
    assert np.array_equal(a, b)  # the same update as DDIM, η = 0: the same images
    assert main(["sample", *common, "--sampler", "two-step", "--eta", "0.5",
                 "-o", str(tmp_path / "c")]) == 2  # fmt: skip


@pytest.mark.parametrize("sampler, api", [("dpmpp-2m", "sample_dpmpp_2m"), ("ddim", "sample")])
def test_logsnr_from_the_command_line_is_the_api_sampler(sampler, api, tiny_checkpoint, tmp_path):
    """`ddim sample --skip logsnr` (DDIM or 2M) makes the images of `ddim.sample(…, skip="logsnr")`
    / `ddim.sample_dpmpp_2m`, over the τ of the checkpoint's schedule."""
    import ddim
    from ddim.sampling.seeds import seed_latents

    argv = ["sample", "--ckpt", str(tiny_checkpoint), "--n", "3", "--steps", "5", "--skip",
            "logsnr", "--sampler", sampler, "--precision", "fp32", "-o", str(tmp_path)]
    assert main(argv) == 0
    net, config = ddim.load_model(tiny_checkpoint)
    betas = config.diffusion.betas()
    with torch.no_grad():
        x_0 = getattr(ddim, api)(lambda x, t: net(x, t), seed_latents(range(3), (3, 8, 8), "cpu"),
                                 betas, steps=5, skip="logsnr")  # fmt: skip
    expected = to_uint8(x_0).permute(0, 2, 3, 1).numpy()
    images = np.load(tmp_path / "samples.npz")["arr_0"]
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1  # channels-last rounding
    record = json.loads((tmp_path / "sample.json").read_text())
    option = {"eta": 0.0} if sampler == "ddim" else {}
    assert record["sampler"] == {"steps": 5, "skip": "logsnr", **option, "kind": sampler,
                                 "clip_x0": False}  # fmt: skip
    assert record["timesteps"] == schedule.timesteps(len(betas), 5, "logsnr", betas=betas)


def test_walk_hands_each_step_the_one_before():
    x = torch.zeros(1, 2, dtype=torch.float64)
    plan = samplers.ddim_plan(schedule.make_betas("linear", 1000), [0, 500, 900], 0.0)
    seen = []

    def update(x, eps, step, noise, *, clip_x0, previous):
        seen.append(None if previous is None else (previous.step, previous.x0_pred.shape))
        return samplers.generalized_step(x, eps, step, noise, clip_x0=clip_x0)

    list(samplers.walk(lambda x, t: torch.zeros_like(x), x, plan, update=update))
    assert seen == [None, (plan[0], (1, 2)), (plan[1], (1, 2))]
