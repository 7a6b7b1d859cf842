"""ddim.convert and `ddim convert`: the name map, diffusers folders both ways, the CLI."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from ddim.checkpoint import load_checkpoint, save_checkpoint
from ddim.checkpoint.diffusers import (
    diffusers_key,
    diffusers_scheduler_config,
    diffusers_unet_config,
    export_diffusers,
    from_diffusers_state,
    model_config_from_diffusers,
    official_key,
    require_diffusers,
    to_diffusers_state,
)
from ddim.cli import main
from ddim.config import ModelConfig, apply_overrides, load_config
from ddim.errors import DdimError
from ddim.network.unet import UNet

# Official name -> diffusers UNet2DModel name for the CIFAR-10 model (4 levels, attention at
# level 1); diffusers numbers its up blocks from the bottom.
CIFAR10_NAMES = {
    "temb.dense.0.weight": "time_embedding.linear_1.weight",
    "temb.dense.1.bias": "time_embedding.linear_2.bias",
    "conv_in.weight": "conv_in.weight",
    "down.0.block.1.norm1.weight": "down_blocks.0.resnets.1.norm1.weight",
    "down.1.block.0.nin_shortcut.weight": "down_blocks.1.resnets.0.conv_shortcut.weight",
    "down.1.block.0.temb_proj.bias": "down_blocks.1.resnets.0.time_emb_proj.bias",
    "down.1.attn.1.q.weight": "down_blocks.1.attentions.1.to_q.weight",
    "down.1.attn.0.norm.bias": "down_blocks.1.attentions.0.group_norm.bias",
    "down.2.downsample.conv.weight": "down_blocks.2.downsamplers.0.conv.weight",
    "mid.block_1.conv1.weight": "mid_block.resnets.0.conv1.weight",
    "mid.attn_1.proj_out.bias": "mid_block.attentions.0.to_out.0.bias",
    "mid.block_2.norm2.bias": "mid_block.resnets.1.norm2.bias",
    "up.3.block.0.conv2.weight": "up_blocks.0.resnets.0.conv2.weight",
    "up.1.attn.2.v.weight": "up_blocks.2.attentions.2.to_v.weight",
    "up.1.upsample.conv.bias": "up_blocks.2.upsamplers.0.conv.bias",
    "up.0.block.2.nin_shortcut.bias": "up_blocks.3.resnets.2.conv_shortcut.bias",
    "norm_out.weight": "conv_norm_out.weight",
    "conv_out.bias": "conv_out.bias",
}


@pytest.fixture(scope="module")
def cifar10_meta_state():
    c = load_config("cifar10")
    with torch.device("meta"):
        return UNet.from_config(c.model, c.data.image_size).state_dict()


def test_known_names(cifar10_meta_state):
    for official, diffusers in CIFAR10_NAMES.items():
        assert official in cifar10_meta_state
        assert diffusers_key(official, 4) == diffusers
        assert official_key(diffusers, 4) == official


def test_state_round_trip(cifar10_meta_state):
    state = to_diffusers_state(cifar10_meta_state)
    assert len(state) == len(cifar10_meta_state)
    assert state["down_blocks.1.attentions.0.to_k.weight"].shape == (256, 256)
    assert state["mid_block.attentions.0.to_out.0.weight"].shape == (256, 256)
    back = from_diffusers_state(state)
    assert list(back) == list(cifar10_meta_state)
    assert all(back[k].shape == v.shape for k, v in cifar10_meta_state.items())


def test_old_diffusers_attention_names():
    for old, new in (("query", "q"), ("key", "k"), ("value", "v"), ("proj_attn", "proj_out")):
        assert official_key(f"mid_block.attentions.0.{old}.weight", 4) == f"mid.attn_1.{new}.weight"


def test_unet_config_for_cifar10():
    c = load_config("cifar10")
    unet = diffusers_unet_config(c.model, c.data.image_size)
    assert unet["block_out_channels"] == [128, 256, 256, 256]
    down, up = ("DownBlock2D", "AttnDownBlock2D"), ("UpBlock2D", "AttnUpBlock2D")
    assert unet["down_block_types"] == [down[0], down[1], down[0], down[0]]
    assert unet["up_block_types"] == [up[0], up[0], up[1], up[0]]
    assert (unet["layers_per_block"], unet["sample_size"], unet["norm_eps"]) == (2, 32, 1e-6)
    assert (unet["freq_shift"], unet["flip_sin_to_cos"]) == (1, False)  # ω_k as in DDPM
    assert unet["downsample_padding"] == 0  # the official pad-right-and-bottom downsampling
    model = ModelConfig(ch=128, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), dropout=0.1)
    assert model_config_from_diffusers(unet, "x") == (model, 32)
    with pytest.raises(DdimError, match="flip_sin_to_cos"):
        model_config_from_diffusers({k: v for k, v in unet.items() if k != "flip_sin_to_cos"}, "x")


def test_scheduler_config():
    c = load_config("cifar10")
    s = diffusers_scheduler_config(c)
    assert (s["beta_schedule"], s["beta_start"], s["beta_end"]) == ("linear", 0.0001, 0.02)
    assert s["num_train_timesteps"] == 1000
    assert s["set_alpha_to_one"] and not s["clip_sample"]  # ᾱ_{−1} = 1; DDIM does not clip
    assert s["prediction_type"] == "epsilon" and s["timestep_spacing"] == "leading"
    quad = apply_overrides(c, ["diffusion.beta_schedule=quad"])
    assert diffusers_scheduler_config(quad)["beta_schedule"] == "scaled_linear"
    with pytest.raises(DdimError, match="cosine"):
        diffusers_scheduler_config(apply_overrides(c, ["diffusion.beta_schedule=cosine"]))


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    c = load_config("tiny")
    torch.manual_seed(0)
    net, ema = UNet.from_config(c.model, 16), UNet.from_config(c.model, 16)
    path = save_checkpoint(
        tmp_path / "tiny.safetensors",
        model_state=net.state_dict(),
        ema_state=ema.state_dict(),
        config=c,
        step=12,
    )
    return path, net, ema


def test_diffusers_folder_round_trip_without_diffusers(tmp_path, tiny_checkpoint):
    path, _, ema = tiny_checkpoint
    folder = export_diffusers(load_checkpoint(path), tmp_path / "hf")
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "DDIMPipeline"
    back = load_checkpoint(folder)
    assert back.kind == "diffusers" and back.config.diffusion == load_config("tiny").diffusion
    assert back.model_config.ch_mult == (1, 2) and back.image_size == 16
    for key, value in ema.state_dict().items():
        assert torch.equal(back.model_state[key], value)


def test_what_diffusers_has_no_argument_for_is_exported_and_read_back(tmp_path,
                                                                      tiny_checkpoint):
    """The dataset name (ddim table's default spacing) and the model options a UNet2DModel does
    not take travel in private keys; edited ones are refused naming the file; a folder without
    them (written by others) reads as before."""
    path, _, _ = tiny_checkpoint
    folder = export_diffusers(load_checkpoint(path), tmp_path / "hf")
    original, back = load_config("tiny"), load_checkpoint(folder).config
    assert back.model == original.model and back.sampling == original.sampling
    assert back.data.dataset == "CIFAR10" and back.data.random_flip == original.data.random_flip
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(scheduler_file.read_text())
    for edited, message in [({"dataset": 3}, "data.dataset"), ({"path": "/d"}, "_ddim_data")]:
        scheduler_file.write_text(json.dumps({**scheduler, "_ddim_data": edited}))
        with pytest.raises(DdimError, match=message):
            load_checkpoint(folder)
    scheduler_file.write_text(json.dumps({k: v for k, v in scheduler.items() if k != "_ddim_data"}))
    unet_file = folder / "unet" / "config.json"
    unet = json.loads(unet_file.read_text())
    unet_file.write_text(json.dumps({**unet, "_ddim_model": {"var_type": "learned"}}))
    with pytest.raises(DdimError, match="var_type"):
        load_checkpoint(folder)
    unet_file.write_text(json.dumps({k: v for k, v in unet.items() if k != "_ddim_model"}))
    assert load_checkpoint(folder).config.data.dataset == "unknown"  # as a foreign folder reads


def test_missing_diffusers_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(DdimError, match="pip install diffusers"):
        require_diffusers()


def test_cli_official_to_ddim_to_diffusers(tmp_path, capsys):
    c = load_config("tiny")
    torch.manual_seed(0)
    net = UNet.from_config(c.model, 16)
    states = [{f"module.{k}": v for k, v in net.state_dict().items()}, {}, 1, 40, net.state_dict()]
    torch.save(states, tmp_path / "ckpt.pth")
    assert main(["convert", str(tmp_path / "ckpt.pth"), str(tmp_path / "a.safetensors")]) == 2
    assert "--config" in capsys.readouterr().err
    args = ["convert", str(tmp_path / "ckpt.pth"), str(tmp_path / "a.safetensors")]
    assert main([*args, "--config", "tiny"]) == 0
    converted = load_checkpoint(tmp_path / "a.safetensors")
    assert converted.config == c and converted.step == 40
    assert converted.meta["extra"]["source_kind"] == "official"
    assert main(["convert", str(tmp_path / "a.safetensors"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_diffusers_loads_our_export_and_we_load_theirs(tmp_path, tiny_checkpoint):
    diffusers = pytest.importorskip("diffusers")
    path, _, ema = tiny_checkpoint
    assert main(["convert", str(path), str(tmp_path / "hf"), "--verify"]) == 0
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path / "hf" / "unet").eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 999])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x, t).sample, ema.eval()(x, t), rtol=1e-4, atol=1e-5)
    scheduler = diffusers.DDIMScheduler.from_pretrained(tmp_path / "hf" / "scheduler")
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), alpha_bar, rtol=1e-6, atol=0)

    # A folder written by diffusers itself (random weights) loads and gives the same ε.
    torch.manual_seed(1)
    theirs = diffusers.UNet2DModel(**{
        k: v for k, v in diffusers_unet_config(load_config("tiny").model, 16).items()
        if not k.startswith("_")
    }).eval()  # fmt: skip
    theirs.save_pretrained(tmp_path / "theirs" / "unet")
    scheduler.save_pretrained(tmp_path / "theirs" / "scheduler")
    ours = load_checkpoint(tmp_path / "theirs")
    net = UNet.from_config(ours.model_config, ours.image_size).eval()
    net.load_state_dict(ours.model_state)
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), theirs(x, t).sample, rtol=1e-4, atol=1e-5)
