"""Numbers checked whole, before any work: every config value when the config is read, the
schedule when it is made, η by its one check, host memory and inflating archives, NumPy and
PyTorch scalars wherever Python numbers are taken, datasets whose splits would mix.
docs/reliability.md lists the classes and their guarantees."""

from __future__ import annotations

import dataclasses
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
import ddim.cli
from ddim.config import (
    Config,
    DiffusionConfig,
    ModelConfig,
    SamplingConfig,
    TrainingConfig,
    apply_overrides,
    load_config,
)
from ddim.diffusion.samplers import check_eta
from ddim.diffusion.schedule import alpha_bars, make_betas
from ddim.errors import DdimError
from ddim.scalars import as_float, as_int

# --- every config value is checked when the config is read -------------------------------------

# (override, the words the error must contain): each was accepted before, and met only by an
# optimiser, a generator or the first sample grid (or never).
BAD_VALUES = [
    ("training.adam_beta1=2", "training.adam_beta1=2.0 must be in [0, 1)"),
    ("training.adam_beta1=1", "training.adam_beta1=1.0 must be in [0, 1)"),
    ("training.adam_beta2=-0.1", "training.adam_beta2=-0.1 must be in [0, 1)"),
    ("training.adam_eps=-1e-8", "training.adam_eps=-1e-08 must be > 0"),
    ("training.adam_eps=0", "training.adam_eps=0.0 must be > 0"),
    ("training.weight_decay=-0.01", "training.weight_decay=-0.01 must be >= 0"),
    ("training.seed=18446744073709551616", "training.seed=18446744073709551616 must be in [0,"),
    ("training.seed=9223372036854775808", "must be in [0, 2^63 - 1]"),
    ("training.seed=-1", "training.seed=-1 must be in [0, 2^63 - 1]"),
    ("training.lr=.inf", "training.lr=inf must be finite"),
    ("training.grad_clip=.nan", "training.grad_clip=nan must be finite"),
    ("model.dropout=.nan", "model.dropout=nan must be finite"),
    ("sampling.steps=1001", "sampling.steps=1001 must be <= diffusion.num_diffusion_timesteps"),
    ("model.attn_resolutions=[2]", "it never reaches 2"),
    ("model.attn_resolutions=[32, 16]", "it never reaches 32"),
    ("model.attn_resolutions=[0]", "positive resolutions"),
    ("diffusion.num_diffusion_timesteps=100000000000", "num_diffusion_timesteps=100000000000"),
    ("diffusion.beta_schedule=jsd", "β = 1 at t = 999"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_config_values_are_refused_when_read(override, message):
    with pytest.raises(DdimError) as error:
        apply_overrides(load_config("tiny"), [override])
    assert message in str(error.value)


def test_a_config_file_with_a_bad_value_is_refused_before_training(tmp_path, capsys):
    """`ddim train --dry-run` reads the whole config and refuses it: nothing starts."""
    config = tmp_path / "c.yml"
    config.write_text("training:\n  adam_beta1: 2\n")
    code = ddim.cli.main(["train", "--config", str(config), "--dry-run",
                          "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "training.adam_beta1=2.0 must be in [0, 1)" in err[-1]
    assert not (tmp_path / "run").exists()


def test_the_sections_are_checked_together_however_the_config_is_made():
    small_steps = SamplingConfig(steps=100)
    with pytest.raises(DdimError, match="sampling.steps=100 must be <= .*=50"):
        Config(diffusion=DiffusionConfig(num_diffusion_timesteps=50), sampling=small_steps)
    with pytest.raises(DdimError, match="never reaches 8"):  # 64 px, 2 levels: 64 and 32
        Config(model=ModelConfig(ch_mult=(1, 2), attn_resolutions=(8,)),
               data=dataclasses.replace(Config().data, image_size=64))
    with pytest.raises(DdimError, match="training.adam_beta1=1.5"):
        TrainingConfig(adam_beta1=1.5)  # the constructor checks too, not only YAML


DUPLICATES = [
    ("training:\n  lr: 0.001\ntraining:\n  seed: 3\n", "key 'training' appears twice", "1 and 3"),
    ("training:\n  lr: 0.001\n  lr: 0.1\n", "key 'lr' appears twice", "2 and 3"),
    ("model: {ch: 32, ch: 64}\n", "key 'ch' appears twice", "1 and 1"),
    ("sampling:\n  eta: 0\n  steps: 5\n  eta: 1\n", "key 'eta' appears twice", "2 and 4"),
]


@pytest.mark.parametrize(("text", "message", "lines"), DUPLICATES)
def test_duplicate_yaml_keys_and_sections_are_refused_naming_key_and_lines(
    text, message, lines, tmp_path
):
    path = tmp_path / "dup.yml"
    path.write_text(text)
    with pytest.raises(DdimError) as error:
        load_config(path)
    assert message in str(error.value) and f"lines {lines}" in str(error.value)


def test_duplicate_keys_in_a_set_value_are_refused():
    with pytest.raises(DdimError, match="key 'a' appears twice"):
        apply_overrides(load_config("tiny"), ["model.ch_mult={a: 1, a: 2}"])


def test_a_merge_key_is_not_a_duplicate(tmp_path):
    path = tmp_path / "merge.yml"
    path.write_text("sampling:\n  <<: {steps: 7}\n  eta: 0.5\n")
    config = load_config(path)
    assert (config.sampling.steps, config.sampling.eta) == (7, 0.5)


# --- NumPy and PyTorch scalars are numbers ------------------------------------------------------


def test_numpy_and_torch_scalars_are_accepted_where_python_numbers_are():
    c = Config.from_dict({
        "training": {"lr": np.float32(1e-3), "seed": np.int64(7), "antithetic": np.True_,
                     "batch_size": torch.tensor(4)},
        "sampling": {"eta": torch.tensor(0.5, dtype=torch.float64), "steps": np.uint16(20)},
        "model": {"ch_mult": [np.int32(1), np.int64(2)], "dropout": np.float16(0.0)},
        "diffusion": {"beta_end": np.float64(0.02)},
    })  # fmt: skip
    assert type(c.training.lr) is float and type(c.training.seed) is int
    assert c.training.antithetic is True and c.training.batch_size == 4
    assert type(c.sampling.eta) is float and c.sampling.steps == 20
    assert all(type(m) is int for m in c.model.ch_mult)
    assert Config.from_dict(c.to_dict()) == c  # plain JSON/YAML values, as a record needs
    direct = SamplingConfig(eta=np.float32(0.25), steps=np.int64(5))
    assert type(direct.eta) is float and type(direct.steps) is int

    end = torch.tensor(0.02, dtype=torch.float64)
    assert torch.equal(make_betas("linear", np.int64(10), np.float64(1e-4), end),
                       make_betas("linear", 10, 1e-4, 0.02))
    assert check_eta(np.float32(0.5)) == 0.5 and check_eta(torch.tensor(1)) == 1.0


@pytest.mark.parametrize("value", [True, np.True_, torch.tensor(True), 2.5, np.float64(2.0),
                                   "3", None, torch.tensor([1, 2])])
def test_what_is_not_an_integer_is_refused(value):
    with pytest.raises(DdimError, match="must be an integer"):
        as_int(value, "n")
    with pytest.raises(DdimError, match="must be of type int"):
        Config.from_dict({"training": {"batch_size": value}})


@pytest.mark.parametrize("value", [np.bool_(False), torch.tensor(True), "x", [1.0],
                                   torch.ones(2), 1j])
def test_what_is_not_a_number_is_refused(value):
    with pytest.raises(DdimError, match="must be a number"):
        as_float(value, "x")
    with pytest.raises(DdimError, match="must be a number"):
        check_eta(value)


def test_bool_fields_take_booleans_only():
    assert Config.from_dict({"training": {"antithetic": torch.tensor(False)}}).training.antithetic \
        is False
    for value in (1, 0, "yes", np.int64(1)):
        with pytest.raises(DdimError, match="training.antithetic=.* must be of type bool"):
            Config.from_dict({"training": {"antithetic": value}})


# --- the schedule is checked when it is made ----------------------------------------------------


def test_a_schedule_whose_alpha_bar_underflows_is_refused_naming_where():
    # β = 0.9 everywhere: ᾱ_t = 0.1^(t+1), below 2^-126 from t = 37 on; float64 holds it until
    # t = 322 and underflows to exactly 0 after it: both are images of NaN.
    with pytest.raises(DdimError, match=r"ᾱ falls to 1e-38 at t = 37 of T = 1000"):
        make_betas("const", 1000, 0.5, 0.9)
    with pytest.raises(DdimError, match=r"diffusion.beta_schedule='const': ᾱ falls to"):
        apply_overrides(load_config("tiny"), ["diffusion.beta_schedule=const",
                                              "diffusion.beta_end=0.9"])
    # a schedule just above the bound is kept, and it samples finite numbers
    T = 50
    betas = make_betas("const", T, 0.5, 0.82)  # ᾱ_49 = 0.18^50 ≈ 5.6e-38
    assert alpha_bars(betas)[-1] > torch.finfo(torch.float32).tiny
    x = ddim.sample(lambda x, t: torch.zeros_like(x), torch.randn(2, 3, 4, 4), betas,
                    steps=T, skip="trailing", eta=1.0, generator=torch.Generator())
    assert torch.isfinite(x).all()


@pytest.mark.parametrize(("betas", "message"), [
    (torch.tensor([0.1, 1.0, 0.1], dtype=torch.float64), "β = 1 at t = 1"),
    (torch.tensor([0.1, 0.0, 0.1]), r"beta must lie in \(0, 1\], got 0.0 at t = 1"),
    (torch.tensor([0.1, -0.2]), "got -0.2"),
    (torch.tensor([0.1, float("nan")]), "got nan at t = 1"),
    (torch.tensor([1.5]), "got 1.5"),
    (torch.zeros(2, 2) + 0.1, "1-D"),
])  # fmt: skip
def test_every_sampler_refuses_a_schedule_it_cannot_walk(betas, message):
    """The samplers take β from the caller too: they meet the same check (ᾱ is made once)."""
    x = torch.randn(1, 2)
    eps = lambda x, t: torch.zeros_like(x)  # noqa: E731
    for run in (lambda: ddim.sample(eps, x, betas, steps=1),
                lambda: ddim.sample_ddpm(eps, x, betas),
                lambda: ddim.encode(eps, x, betas, steps=1)):
        with pytest.raises(DdimError, match=message):
            run()


# --- η: any finite value works or is refused with its range -------------------------------------


@pytest.mark.parametrize("eta", [1000.0, 5.0, 1e-300])
def test_large_eta_in_range_samples_finite_images(eta):
    betas = make_betas("linear", 1000)
    g = ddim.generators_from_seeds([0, 1])
    x_T = ddim.randn((2, 3, 4, 4), g)
    eps = lambda x, t: 0.1 * x  # noqa: E731
    for skip in ("uniform", "trailing"):
        x = ddim.sample(eps, x_T, betas, steps=20, skip=skip, eta=eta, generator=g)
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("eta", [1000.001, 1e10, 1e155, 1e200, sys.float_info.max, -1e-9])
def test_eta_out_of_range_is_refused_with_its_range(eta):
    with pytest.raises(DdimError, match=r"must be finite and >= 0, at most 1000"):
        check_eta(eta)
    with pytest.raises(DdimError, match="sampling.eta"):
        SamplingConfig(eta=eta)


def test_eta_out_of_range_on_the_command_line_is_one_line(tiny_checkpoint, tmp_path, capsys):
    code = ddim.cli.main(["sample", "--ckpt", str(tiny_checkpoint), "--n", "1", "--steps", "2",
                          "--eta", "1e200", "--device", "cpu", "-o", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--eta=1e+200 must be finite and >= 0, at most 1000" in err[-1]
    assert not (tmp_path / "s" / "parts").exists()


# --- a sampler's output that is not finite is an error naming its cause -------------------------


def nan_at(t_bad: int):
    """An ε-model that returns 0, except NaN at timestep `t_bad` (a network that diverged there)."""
    return lambda x, t: torch.where(t.view(-1, 1, 1, 1) == t_bad, torch.nan, 0.0) + 0 * x


@pytest.mark.parametrize("name, option", [("ddim", {"eta": 0.0}), ("ddim", {"eta": 1.0}),
                                          ("ddpm", {"variance": "large"}), ("dpmpp-2m", {})])
def test_a_nan_from_the_network_names_the_step_that_made_it(name, option):
    from ddim.sampling import build_sampler, sample_seeds

    sampler = build_sampler(make_betas(), 4, "uniform", name, **option)
    assert sampler.timesteps == (0, 250, 500, 750)
    with pytest.raises(DdimError) as error:
        sample_seeds(nan_at(500), sampler, [0, 1], (3, 2, 2), "cpu")
    message = str(error.value)
    assert f"the {name} sampler's output holds NaN or infinity from step 2 of 4: the network's " \
        "output at t=500," in message and "check the weights" in message
    assert sample_seeds(nan_at(501), sampler, [0], (3, 2, 2), "cpu").isfinite().all()


def test_an_update_that_overflows_and_a_bad_start_are_named_apart():
    from ddim.sampling import build_sampler
    from ddim.sampling.finite import non_finite_cause

    sampler = build_sampler(make_betas(), 4, "uniform", "ddim", eta=0.5)
    overflow = [True, True, True, True, False, False, False, False, False]
    message = non_finite_cause(overflow, sampler.plan, "ddim")
    assert "from step 2 of 4 (t=500 to 250): the update overflowed" in message
    assert "check eta (sigma=" in message
    start = torch.full((1, 3, 2, 2), torch.inf)
    with pytest.raises(DdimError, match="given a start x that holds NaN or infinity"):
        sampler.run(lambda x, t: torch.zeros_like(x), start)


def test_encoding_into_nan_is_named_too():
    from ddim.sampling import build_sampler, encode_images

    sampler = build_sampler(make_betas(), 4, "uniform", "ddim", eta=0.0)
    images = torch.zeros((2, 3, 2, 2), dtype=torch.uint8)
    with pytest.raises(DdimError, match=r"the ddim encoding sampler's output .* from step 4 of 4: "
                                        r"the network's output at t=750,"):  # fmt: skip
        encode_images(nan_at(750), sampler, images, batch=2, device="cpu")


def test_a_nan_batch_on_the_command_line_is_one_line_and_keeps_the_shards_before_it(
    tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    """The network turns NaN in the second batch only: the first batch's shard stays, no shard
    of NaN (black) images is written, and the error is one line naming the step."""
    import ddim.sampling.model

    real, batches = ddim.sampling.model.eps_model_for, []

    def diverging(net, precision):
        eps_model = real(net, precision)

        def eps(x, t):
            if int(t[0]) == 666:  # the first of τ = (0, 333, 666): a new batch
                batches.append(len(x))
            return eps_model(x, t) * (torch.nan if len(batches) == 2 else 1.0)

        return eps

    monkeypatch.setattr(ddim.sampling.model, "eps_model_for", diverging)
    out = tmp_path / "s"
    code = ddim.cli.main(["sample", "--ckpt", str(tiny_checkpoint), "--n", "4", "--batch", "2",
                          "--steps", "3", "--skip", "uniform", "--device", "cpu", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("ddim sample: error: the ddim sampler's output holds")
    assert "from step 1 of 3: the network's output at t=666," in err[-1]
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["part-0000000.npz"]
    assert not (out / "samples.npz").exists() and not (out / "sample.json").exists()


# --- a dataset is read one split at a time ------------------------------------------------------


def _png(path, seed=0, size=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _split_folder(root, held_out="test", parent=""):
    for k in range(3):
        _png(root / parent / "train" / "cat" / f"{k}.png", seed=k)
        _png(root / parent / held_out / "cat" / f"{k}.png", seed=10 + k)
    return root


@pytest.mark.parametrize(("held_out", "parent"), [("test", ""), ("val", ""), ("Validation", ""),
                                                  ("test", "cifar10")])  # fmt: skip
def test_a_folder_with_train_and_held_out_splits_is_refused_without_subdir(
    held_out, parent, tmp_path
):
    root = _split_folder(tmp_path / "data", held_out, parent)
    pick = f"{parent}/train".lstrip("/")
    with pytest.raises(DdimError) as error:
        ddim.open_dataset(root)
    message = str(error.value)
    assert f"holds {pick}/ and {f'{parent}/{held_out}'.lstrip('/')}/" in message
    assert f"subdir='{pick}'" in message and f"--subdir {pick}" in message
    assert len(ddim.open_dataset(root, subdir=pick)) == 3  # one split: read
    if parent:  # a subdir above both splits still mixes them
        with pytest.raises(DdimError, match=r"\[cifar10\] holds train/ and test/"):
            ddim.open_dataset(root, subdir=parent)


def test_a_zip_with_train_and_test_folders_is_refused_without_subdir(tmp_path, capsys):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for split in ("train", "test"):
            for k in range(2):
                _png(tmp_path / "x.png", seed=k)
                archive.write(tmp_path / "x.png", f"{split}/c{k}/{k}.png")
    with pytest.raises(DdimError, match="d.zip holds train/ and test/"):
        ddim.open_dataset(path)
    assert len(ddim.open_dataset(path, subdir="test")) == 2
    # the case: a "train" reference that held both splits
    out = tmp_path / "train-ref.npz"
    code = ddim.cli.main(["fid", "ref", str(path), "-o", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--subdir train" in err[-1] and not out.exists()


def test_one_split_and_a_class_named_test_are_not_refused(tmp_path):
    for k in range(2):
        _png(tmp_path / "only" / "train" / f"{k}.png", seed=k)  # no held-out split beside it
        _png(tmp_path / "classes" / "train" / "test" / f"{k}.png", seed=k)  # not siblings
        _png(tmp_path / "classes" / "train" / "other" / f"{k}.png", seed=k)
    assert len(ddim.open_dataset(tmp_path / "only")) == 2
    assert len(ddim.open_dataset(tmp_path / "classes")) == 4


def test_a_network_of_other_channels_is_refused_when_the_dataset_opens(tmp_path):
    _png(tmp_path / "d" / "0.png")
    assert len(ddim.open_dataset(tmp_path / "d", channels=3)) == 1
    for channels in (1, 4):
        with pytest.raises(DdimError, match=f"channels={channels} .*give RGB images"):
            ddim.open_dataset(tmp_path / "d", channels=channels)


# --- an archive member that would inflate to gigabytes ------------------------------------------


def _forge_sizes(path, size: int) -> None:
    """Set every member's declared uncompressed size (central directory and local headers)."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            data[start + offset: start + offset + 4] = size.to_bytes(4, "little")
            start += 4
    path.write_bytes(bytes(data))


def test_a_zip_member_declaring_gigabytes_is_refused_before_inflating(tmp_path, capsys):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.png", b"\0" * 4096)
    _forge_sizes(path, 0xFFFF0000)  # 4 GiB declared
    with pytest.raises(DdimError, match=r"a.png in .*bomb.zip declares 4.0 GiB uncompressed"):
        ddim.open_dataset(path)
    code = ddim.cli.main(["fid", "ref", str(path), "-o", str(tmp_path / "r.npz"),
                          "--device", "cpu"])
    assert code == 2 and "declares 4.0 GiB" in capsys.readouterr().err


def test_a_zip_member_that_inflates_past_its_declared_size_is_a_clear_error(tmp_path):
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.png", b"\0" * 1_000_000)
    _forge_sizes(path, 100)  # declares 100 bytes: zipfile stops there, and the CRC fails
    with pytest.raises(DdimError, match="a.png"):
        ddim.open_dataset(path)[0]


# --- host out of memory -------------------------------------------------------------------------


def _command_that(monkeypatch, command, effect):
    """Replace a sub-command's run function with `effect`."""
    build = ddim.cli.build_parser

    def parser():
        p = build()
        subparsers = next(a for a in p._actions if a.dest == "command")
        subparsers.choices[command].set_defaults(_run=effect)
        return p

    monkeypatch.setattr(ddim.cli, "build_parser", parser)


@pytest.mark.parametrize(("command", "argv", "hint"), [
    ("sample", ["--batch", "64"], "out of memory at batch size 64; try a smaller --batch, e.g. 32"),
    ("train", [], "out of memory; try a smaller --batch"),
])  # fmt: skip
def test_host_out_of_memory_is_one_line_with_the_advice(command, argv, hint, monkeypatch, capsys):
    """Torch's CPU allocator raises a RuntimeError, not MemoryError: a real one, here."""
    _command_that(monkeypatch, command, lambda args: torch.empty(2**62, dtype=torch.uint8))
    capsys.readouterr()
    assert ddim.cli.main([command, *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"ddim {command}: error: {hint}\n"


def test_other_runtime_errors_are_still_bugs(monkeypatch):
    def bug(args):
        raise RuntimeError("shape mismatch: can't allocate a meaning to this")

    _command_that(monkeypatch, "sample", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        ddim.cli.main(["sample"])
