"""The config keys the official files carry that once did nothing: each acts or is dropped, with
its note, when read.

    model.var_type    acts: the DDPM sampler's default variance (fixedlarge: β, fixedsmall: β̃)
    model.ema         acts: sampling uses the EMA weights unless it is false (or --raw)
    model.type        acts as a check: only the DDPM U-Net, "simple", is accepted
    data.category     dropped when read, with a note (a dataset here is its path)
    data.num_workers  dropped when read, with a note (a run-time choice: --workers)
"""

import json
import math

import pytest
import safetensors.torch
import torch

from ddim.checkpoint import load_checkpoint, load_model, save_checkpoint
from ddim.checkpoint.format import metadata_sha256, read_safetensors
from ddim.config import OFFICIAL_DROPPED, Config, apply_overrides, load_config
from ddim.diffusion.samplers import ddim_sigma
from ddim.errors import DdimError
from ddim.sampling import load_sampling_model, sampling_settings


@pytest.mark.parametrize("var_type, variance", [("fixedlarge", "large"), ("fixedsmall", "small")])
def test_var_type_is_the_ddpm_samplers_default_variance(var_type, variance):
    config = apply_overrides(load_config("tiny"), [f"model.var_type={var_type}"])
    sampler = sampling_settings(config, sampler="ddpm", steps=5).sampler
    assert sampler.option == ("variance", variance)
    step = sampler.plan[0]  # τ_5 → τ_4: the noise the plan adds is that variance's
    a_t, a_s = step.alpha_bar_from, step.alpha_bar_to
    large, small = math.sqrt(1 - a_t / a_s), ddim_sigma(a_t, a_s, 1.0)
    assert step.noise_sigma == pytest.approx(large if variance == "large" else small, rel=1e-12)
    other = "small" if variance == "large" else "large"
    asked = sampling_settings(config, sampler="ddpm", steps=5, variance=other).sampler
    assert asked.option == ("variance", other)  # an explicit variance wins
    assert sampling_settings(config, steps=5).sampler.option == ("eta", config.sampling.eta)


def test_model_ema_chooses_the_weights_that_sample(tiny_checkpoint, tmp_path):
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 9])
    ema_net, config = load_model(tiny_checkpoint, use_ema=True)
    raw_net, _ = load_model(tiny_checkpoint, use_ema=False)
    assert not torch.equal(ema_net(x, t), raw_net(x, t))  # the two sets of weights differ
    source = load_checkpoint(tiny_checkpoint)
    without = save_checkpoint(tmp_path / "no-ema.safetensors", model_state=source.model_state,
                              ema_state=source.ema_state, step=0,
                              config=apply_overrides(config, ["model.ema=false"]))  # fmt: skip
    for chosen, expected, ema in [
        (load_sampling_model(tiny_checkpoint, precision="fp32"), ema_net, True),
        (load_sampling_model(tiny_checkpoint, precision="fp32", raw=True), raw_net, False),
        (load_sampling_model(without, precision="fp32"), raw_net, False),
    ]:  # fmt: skip
        label = "ema" if ema else "raw"
        assert chosen.weights == chosen.settings()["provenance"]["weights"] == label
        torch.testing.assert_close(chosen.eps_model(x, t), expected(x, t))


def test_model_type_accepts_only_the_ddpm_unet():
    assert Config.from_dict({"model": {"type": "simple"}}).model.type == "simple"
    with pytest.raises(DdimError, match="model.type"):
        Config.from_dict({"model": {"type": "bayesian"}})


@pytest.mark.parametrize("key", ["data.category", "data.num_workers"])
def test_category_and_num_workers_are_dropped_with_a_note(key, tmp_path):
    section, name = key.split(".")
    assert len(OFFICIAL_DROPPED[key]) > 20  # the note of why
    church = load_config("church").to_dict()
    church[section][name] = {"data.category": "church_outdoor", "data.num_workers": 32}[key]
    (tmp_path / "c.yml").write_text(json.dumps(church))  # JSON is YAML
    assert load_config(tmp_path / "c.yml") == load_config("church")
    assert name not in load_config("church").to_dict()[section]
    with pytest.raises(DdimError, match=f"unknown key '{key}'"):
        apply_overrides(load_config("church"), [f"{key}=1"])


def test_a_checkpoint_that_recorded_the_dropped_keys_loads(tiny_checkpoint, tmp_path):
    """A file written before the keys went (as the weights shipped until 2026-11 were): its
    recorded config carries them, its checksum covers them, and it loads without them."""
    tensors, raw_meta = read_safetensors(tiny_checkpoint)
    meta = {key: json.loads(value) for key, value in raw_meta.items()}
    for data in (meta["config"]["data"], meta["data"]):
        data |= {"category": "", "num_workers": 4}
    meta["metadata_sha256"] = metadata_sha256(meta)
    old = tmp_path / "old.safetensors"
    safetensors.torch.save_file(tensors, old, {k: json.dumps(v) for k, v in meta.items()})
    recorded = json.loads(read_safetensors(old)[1]["config"])
    assert {"category", "num_workers"} <= recorded["data"].keys()
    config = load_checkpoint(old).config
    assert config.to_dict()["model"] == recorded["model"]
    assert config.to_dict()["data"] == {k: v for k, v in recorded["data"].items()
                                        if k not in ("category", "num_workers")}  # fmt: skip
