"""ddim.config: the official values, strict parsing, overrides, exact YAML round trips."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ddim.config import (
    CONFIG_NAMES,
    Config,
    ModelConfig,
    apply_overrides,
    dump_config,
    load_config,
)
from ddim.errors import DdimError

# ermongroup/ddim configs/cifar10.yml, as published (facts: key names and values).
OFFICIAL_CIFAR10_YML = """\
data:
    dataset: "CIFAR10"
    image_size: 32
    channels: 3
    logit_transform: false
    uniform_dequantization: false
    gaussian_dequantization: false
    random_flip: true
    rescaled: true
    num_workers: 4

model:
    type: "simple"
    in_channels: 3
    out_ch: 3
    ch: 128
    ch_mult: [1, 2, 2, 2]
    num_res_blocks: 2
    attn_resolutions: [16, ]
    dropout: 0.1
    var_type: fixedlarge
    ema_rate: 0.9999
    ema: True
    resamp_with_conv: True

diffusion:
    beta_schedule: linear
    beta_start: 0.0001
    beta_end: 0.02
    num_diffusion_timesteps: 1000

training:
    batch_size: 128
    n_epochs: 10000
    n_iters: 5000000
    snapshot_freq: 5000
    validation_freq: 2000

sampling:
    batch_size: 64
    last_only: True

optim:
    weight_decay: 0.000
    optimizer: "Adam"
    lr: 0.0002
    beta1: 0.9
    amsgrad: false
    eps: 0.00000001
    grad_clip: 1.0
"""


def test_cifar10_has_the_official_values():
    c = load_config("cifar10")
    assert c.model == ModelConfig(
        type="simple", in_channels=3, out_ch=3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
        attn_resolutions=(16,), dropout=0.1, var_type="fixedlarge", ema_rate=0.9999, ema=True,
        resamp_with_conv=True,
    )  # fmt: skip
    d = c.diffusion
    assert (d.beta_schedule, d.beta_start, d.beta_end, d.num_diffusion_timesteps) == (
        "linear", 0.0001, 0.02, 1000,
    )  # fmt: skip
    assert (c.data.dataset, c.data.image_size, c.data.channels) == ("CIFAR10", 32, 3)
    t = c.training
    assert (t.batch_size, t.lr, t.grad_clip, t.adam_eps, t.snapshot_freq) == (
        128, 0.0002, 1.0, 1e-8, 5000,
    )  # fmt: skip
    assert (t.warmup, t.loss, t.antithetic) == (5000, "mean", False)  # DDPM, App. B


def test_celeba_church_bedroom_have_the_official_values():
    celeba = load_config("celeba")
    assert celeba.model.ch_mult == (1, 2, 2, 2, 4) and celeba.data.image_size == 64
    assert celeba.model.dropout == 0.1 and celeba.model.ema_rate == 0.9999
    for name in ("church", "bedroom", "cat"):
        c = load_config(name)
        assert c.model.ch_mult == (1, 1, 2, 2, 4, 4) and c.model.attn_resolutions == (16,)
        assert (c.model.dropout, c.model.var_type, c.model.ema_rate) == (0.0, "fixedsmall", 0.999)
        assert (c.data.dataset, c.data.image_size) == ("LSUN", 256)
        assert (c.training.batch_size, c.training.lr, c.training.grad_clip) == (64, 2e-5, None)


def test_tiny_is_small():
    c = load_config("tiny")
    assert c.model.ch == 32 and c.model.ch_mult == (1, 2) and c.model.num_res_blocks == 1
    assert c.data.image_size in (16, 32)


def test_official_yml_file_loads(tmp_path):
    path = tmp_path / "cifar10.yml"
    path.write_text(OFFICIAL_CIFAR10_YML)
    official, ours = load_config(path), load_config("cifar10")
    assert official.model == ours.model
    assert official.diffusion == ours.diffusion
    assert official.data == ours.data
    # optim.* are moved into training; where the file is silent the official code's behaviour holds
    t = official.training
    assert (t.lr, t.adam_beta1, t.adam_eps, t.grad_clip, t.weight_decay) == (
        2e-4,
        0.9,
        1e-8,
        1.0,
        0,
    )
    assert (t.warmup, t.loss, t.antithetic, t.batch_size) == (0, "sum", True, 128)


def test_official_yml_without_grad_clip_means_no_clipping(tmp_path):
    path = tmp_path / "church.yml"
    path.write_text(OFFICIAL_CIFAR10_YML.replace("    grad_clip: 1.0\n", ""))
    assert load_config(path).training.grad_clip is None


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("logit_transform: false", "logit_transform: true", "data.logit_transform"),
        ('optimizer: "Adam"', 'optimizer: "SGD"', "optim.optimizer"),
        ("ch: 128", "chanels: 128", "model.chanels"),
        ("image_size: 32", "image_size: big", "data.image_size"),
    ],
)
def test_official_yml_with_unsupported_values_is_refused(tmp_path, old, new, message):
    path = tmp_path / "bad.yml"
    path.write_text(OFFICIAL_CIFAR10_YML.replace(old, new))
    with pytest.raises(DdimError, match=message):
        load_config(path)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_round_trips(name, tmp_path):
    c = load_config(name)
    assert Config.from_dict(c.to_dict()) == c
    path = tmp_path / f"{name}.yml"
    path.write_text(dump_config(c))
    assert load_config(path) == c


def test_from_dict_is_strict():
    d = Config().to_dict()
    cases = [
        ({"modle": {}}, "unknown key 'modle'"),
        ({"model": {"chanels": 3}}, "unknown key 'model.chanels'"),
        ({"model": {"ch": "128"}}, "model.ch"),
        ({"model": {"ch": 128.0}}, "model.ch"),
        ({"model": {"ema": "yes"}}, "model.ema"),
        ({"model": {"num_res_blocks": True}}, "model.num_res_blocks"),
        ({"model": {"ch_mult": 2}}, "model.ch_mult"),
        ({"model": {"ch_mult": [1, "2"]}}, r"model.ch_mult\[1\]"),
        ({"model": {"var_type": "learned"}}, "model.var_type"),
        ({"diffusion": {"num_diffusion_timesteps": None}}, "diffusion.num_diffusion_timesteps"),
        ({"training": {"loss": "max"}}, "training.loss"),
        ({"sampling": {"skip": "cubic"}}, "sampling.skip"),
        ({"data": []}, "data"),
    ]
    for change, message in cases:
        with pytest.raises(DdimError, match=message):
            Config.from_dict({**d, **change})


def test_from_dict_fills_defaults_and_converts_ints_to_floats():
    c = Config.from_dict({"training": {"lr": 1, "grad_clip": 2}})
    assert c.training.lr == 1.0 and isinstance(c.training.lr, float)
    assert c.training.grad_clip == 2.0 and c.model == ModelConfig()


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.ch=48", "multiple of model.num_groups=32"),
        ("model.num_groups=0", "model.num_groups"),
        ("model.out_ch=6", "model.out_ch"),
        ("data.image_size=30", "data.image_size"),
        ("data.channels=1", "data.channels"),
        ("diffusion.beta_start=0.5", "diffusion.beta_start"),
        ("model.dropout=1.5", "model.dropout"),
    ],
)
def test_values_are_validated(override, message):
    with pytest.raises(DdimError, match=message):
        apply_overrides(load_config("cifar10"), [override])


def test_apply_overrides_parses_yaml_values():
    c = load_config("cifar10")
    new = apply_overrides(
        c,
        [
            "model.ch=64",
            "training.lr=1e-4",  # YAML 1.1 reads this as text; a float field accepts it
            "model.ch_mult=[1, 2]",
            "training.grad_clip=null",
            "data.path=/data/cifar",
            "sampling.skip = quad",
        ],
    )
    assert (new.model.ch, new.model.ch_mult, new.training.lr) == (64, (1, 2), 1e-4)
    assert new.training.grad_clip is None and new.data.path == "/data/cifar"
    assert new.sampling.skip == "quad"
    assert c.model.ch == 128  # the original is untouched
    assert dataclasses.replace(new, model=c.model, training=c.training, data=c.data,
                               sampling=c.sampling) == c  # fmt: skip


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.chanels=3", "unknown key 'model.chanels'"),
        ("model=3", "unknown key 'model'"),
        ("model.ch", "section.key=value"),
        ("model.ch=abc", "model.ch"),
        ("training.lr=fast", "training.lr"),
        ("model.ch_mult=[1, 2", "cannot parse"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(DdimError, match=message):
        apply_overrides(load_config("cifar10"), [override])


def test_unknown_config_name_lists_the_known_ones():
    with pytest.raises(DdimError, match="cifar10"):
        load_config("cifar100")


def test_invalid_yaml_is_a_ddim_error(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(DdimError, match="not valid YAML"):
        load_config(path)


@settings(max_examples=50, deadline=None)
@given(
    lr=st.floats(min_value=1e-12, max_value=10, allow_nan=False),
    eta=st.floats(min_value=0, max_value=1e3, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**63 - 1),
    ch=st.sampled_from([32, 64, 96, 128, 256]),
)
def test_yaml_round_trip_is_exact(lr, eta, seed, ch):
    c = apply_overrides(
        load_config("tiny"),
        [f"training.lr={lr!r}", f"sampling.eta={eta!r}", f"training.seed={seed}", f"model.ch={ch}"],
    )
    assert (c.training.lr, c.sampling.eta, c.training.seed) == (lr, eta, seed)
    assert Config.from_dict(c.to_dict()) == c
    assert Config.from_dict(yaml.safe_load(dump_config(c))) == c
