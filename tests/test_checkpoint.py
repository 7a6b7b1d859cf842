"""ddim.checkpoint: exact round trips, damage detection, foreign files, unsafe pickles, crashes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

import ddim
from ddim.checkpoint import load_checkpoint, load_model, save_checkpoint
from ddim.checkpoint.foreign import infer_model_config
from ddim.checkpoint.format import tensors_sha256
from ddim.config import apply_overrides, load_config
from ddim.errors import DdimError
from ddim.network.unet import UNet


@pytest.fixture(scope="module")
def config():
    return load_config("tiny")


def make_net(config, seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet.from_config(config.model, config.data.image_size)


def trained(config):
    """A net, its EMA copy and an Adam optimiser that has taken one step."""
    net, ema = make_net(config, 0), make_net(config, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(2, 3, config.data.image_size, config.data.image_size)
    net(x, torch.tensor([1, 500])).square().mean().backward()
    optimizer.step()
    return net, ema, optimizer


def assert_same(a, b):
    """Exact equality of nested dicts/lists/tuples of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_is_bit_exact(tmp_path, config):
    net, ema, optimizer = trained(config)
    train_state = {
        "optimizer": optimizer.state_dict(),
        "step": 1234,
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.default_rng(5).bit_generator.state,
        },
        "data": {"epoch": 3, "position": 17, "permutation": torch.randperm(50)},
    }
    path = save_checkpoint(
        tmp_path / "run" / "ckpt-001234.safetensors",
        model_state=net.state_dict(),
        ema_state=ema.state_dict(),
        config=config,
        step=1234,
        train_state=train_state,
        extra_meta={"loss": 0.25},
    )
    checkpoint = load_checkpoint(path)
    assert checkpoint.kind == "ddim" and checkpoint.step == 1234 and checkpoint.config == config
    assert_same(checkpoint.model_state, net.state_dict())
    assert_same(checkpoint.ema_state, ema.state_dict())
    assert_same(checkpoint.load_train_state(), train_state)
    assert checkpoint.meta["extra"] == {"loss": 0.25}

    # The restored optimiser continues exactly as the original one.
    net2 = UNet.from_config(config.model, config.data.image_size)
    net2.load_state_dict(checkpoint.model_state)
    optimizer2 = torch.optim.Adam(net2.parameters(), lr=1e-3)
    optimizer2.load_state_dict(checkpoint.load_train_state()["optimizer"])
    for model, opt in ((net, optimizer), (net2, optimizer2)):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
    assert_same(net2.state_dict(), net.state_dict())


def test_checkpoint_describes_itself(tmp_path, config):
    net, ema, _ = trained(config)
    path = save_checkpoint(
        tmp_path / "a.safetensors",
        model_state=net.state_dict(),
        ema_state=ema.state_dict(),
        config=config,
        step=7,
    )
    # Plain safetensors, no ddim code: the metadata is JSON text.
    with safetensors.safe_open(path, framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
        keys = set(f.keys())
    assert meta["format"] == "ddim-checkpoint" and meta["format_version"] == 1
    assert meta["ddim_version"] == ddim.__version__ and meta["step"] == 7
    assert meta["config"] == config.to_dict()
    assert meta["schedule"] == {
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "num_diffusion_timesteps": 1000,
    }
    assert meta["data"]["image_size"] == 16
    assert meta["git_commit"] is None or len(meta["git_commit"]) == 40
    assert meta["train_state"] is None
    assert keys == {f"model.{k}" for k in net.state_dict()} | {f"ema.{k}" for k in net.state_dict()}

    # Sampling needs nothing else: the EMA network and the config come back.
    loaded, loaded_config = load_model(path)
    assert loaded_config == config and not loaded.training
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 900])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), ema.eval()(x, t))
        raw, _ = load_model(path, use_ema=False)
        assert torch.equal(raw(x, t), net.eval()(x, t))


def test_wrapper_prefixes_are_dropped(tmp_path, config):
    net = make_net(config, 0)
    wrapped = {f"module._orig_mod.{k}": v for k, v in net.state_dict().items()}
    path = save_checkpoint(tmp_path / "w.safetensors", model_state=wrapped, config=config, step=0)
    assert load_checkpoint(path).model_state.keys() == net.state_dict().keys()


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, config):
    state = make_net(config, 0).state_dict()
    bad = dict(state)
    bad["conv_in.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(DdimError, match="wrong shape conv_in.weight"):
        save_checkpoint(tmp_path / "x.safetensors", model_state=bad, config=config, step=0)
    del bad["conv_in.weight"]
    with pytest.raises(DdimError, match="missing conv_in.weight"):
        save_checkpoint(tmp_path / "x.safetensors", model_state=bad, config=config, step=0)
    assert not list(tmp_path.iterdir())


def test_train_state_must_be_plain(tmp_path, config):
    state = make_net(config, 0).state_dict()
    for bad in ({"rng": np.zeros(3)}, {"sampler": object()}, {1.5: 0}):
        with pytest.raises(DdimError, match="train_state"):
            save_checkpoint(
                tmp_path / "x.safetensors",
                model_state=state,
                config=config,
                step=0,
                train_state=bad,
            )
    assert not list(tmp_path.iterdir())


def save_tiny(path, config, step=5, train_state=None):
    net = make_net(config, step)
    return save_checkpoint(
        path,
        model_state=net.state_dict(),
        ema_state=net.state_dict(),
        config=config,
        step=step,
        train_state=train_state,
    )


def test_truncated_file_is_an_error(tmp_path, config):
    path = save_tiny(tmp_path / "a.safetensors", config)
    data = path.read_bytes()
    for cut in (0, 4, 8, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(DdimError, match="truncated|not a checkpoint"):
            load_checkpoint(path)


def test_tampered_file_is_an_error(tmp_path, config):
    path = save_tiny(tmp_path / "a.safetensors", config)
    data = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    flipped = bytearray(data)
    flipped[header_end + (len(data) - header_end) // 2] ^= 0x01  # one bit of one weight
    path.write_bytes(flipped)
    with pytest.raises(DdimError, match="checksum"):
        load_checkpoint(path)
    broken = bytearray(data)
    broken[20] = ord("}")  # the JSON header no longer parses
    path.write_bytes(broken)
    with pytest.raises(DdimError):
        load_checkpoint(path)


def test_newer_format_is_refused(tmp_path, config):
    path = save_tiny(tmp_path / "a.safetensors", config)
    with safetensors.safe_open(path, framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["format_version"] = "99"
    safetensors.torch.save_file(tensors, path, metadata=meta)
    with pytest.raises(DdimError, match="format version 99"):
        load_checkpoint(path)


def test_training_state_must_match_its_weights(tmp_path, config):
    path = save_tiny(tmp_path / "a.safetensors", config, train_state={"step": 5})
    (train_file,) = tmp_path.glob("a.train-*.pt")
    torch.save({"step": 6}, train_file)
    with pytest.raises(DdimError, match="does not match"):
        load_checkpoint(path).load_train_state()
    train_file.unlink()
    with pytest.raises(DdimError, match="missing"):
        load_checkpoint(path).load_train_state()


def test_saving_again_replaces_the_training_state(tmp_path, config):
    path = tmp_path / "last.safetensors"
    save_tiny(path, config, step=1, train_state={"step": 1})
    save_tiny(path, config, step=2, train_state={"step": 2})
    assert len(list(tmp_path.glob("last.train-*.pt"))) == 1
    assert load_checkpoint(path).load_train_state() == {"step": 2}
    save_tiny(path, config, step=3)
    assert not list(tmp_path.glob("last.train-*.pt"))


def official_states(config, prefix="module."):
    """The list the official runner torch.saves as ckpt.pth: model, optimiser, epoch, step, EMA.

    Official networks use 32 GroupNorm groups, whatever the packaged config's count."""
    net, ema, optimizer = trained(apply_overrides(config, ["model.num_groups=32"]))
    model = {prefix + k: v for k, v in net.state_dict().items()}
    return net, ema, [model, optimizer.state_dict(), 3, 1200, dict(ema.named_parameters())]


def test_official_ckpt_pth_loads_and_prefers_ema(tmp_path, config):
    net, ema, states = official_states(config)
    path = tmp_path / "ckpt.pth"
    torch.save(states, path)
    checkpoint = load_checkpoint(path)
    assert checkpoint.kind == "official" and checkpoint.step == 1200 and checkpoint.config is None
    assert (checkpoint.model_config.ch, checkpoint.model_config.ch_mult) == (32, (1, 2))
    # Weights do not record the image size: attention is taken to sit at 16x16, as in every
    # released model. For this 16x16 model that gives the same network, planned for 32x32.
    assert checkpoint.model_config.attn_resolutions == (16,) and checkpoint.image_size == 32
    assert_same(checkpoint.model_state, net.state_dict())
    assert_same(checkpoint.weights(), {k: v.detach() for k, v in ema.state_dict().items()})
    assert checkpoint.load_train_state()["epoch"] == 3
    loaded, loaded_config = load_model(path)
    assert loaded_config.model == checkpoint.model_config  # inferred, with the paper's schedule
    assert loaded_config.data.image_size == 32 and loaded_config.diffusion.beta_end == 0.02
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), ema.eval()(x, t))
    named = load_checkpoint(path, config="tiny")
    assert named.config == config and named.image_size == 16


def test_official_ckpt_without_ema_uses_the_model(tmp_path, config):
    net, _, states = official_states(config)
    torch.save(states[:4], tmp_path / "ckpt.pth")
    checkpoint = load_checkpoint(tmp_path / "ckpt.pth")
    assert checkpoint.ema_state is None
    assert_same(checkpoint.weights(), net.state_dict())


@pytest.mark.parametrize("prefix", ["", "module."])
def test_plain_state_dict_loads(tmp_path, config, prefix):
    net = make_net(config, 3)
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, tmp_path / "model.ckpt")
    checkpoint = load_checkpoint(tmp_path / "model.ckpt")
    assert checkpoint.kind == "state_dict" and checkpoint.step is None
    assert_same(checkpoint.model_state, net.state_dict())
    safetensors.torch.save_file(net.state_dict(), tmp_path / "bare.safetensors")
    assert_same(load_checkpoint(tmp_path / "bare.safetensors").model_state, net.state_dict())


def test_config_given_for_a_foreign_file_must_fit(tmp_path, config):
    torch.save(make_net(config, 3).state_dict(), tmp_path / "model.ckpt")
    with pytest.raises(DdimError, match="does not fit"):
        load_checkpoint(tmp_path / "model.ckpt", config="cifar10")


@pytest.mark.parametrize("name, size", [("cifar10", 32), ("celeba", 64), ("church", 256)])
def test_architecture_is_inferred_from_shapes(name, size):
    c = load_config(name)
    with torch.device("meta"):
        state = UNet.from_config(c.model, c.data.image_size).state_dict()
    model, image_size = infer_model_config(state)
    assert image_size == size
    for key in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels", "out_ch"):
        assert getattr(model, key) == getattr(c.model, key)


class Payload:
    """Unpickling this would create the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "ckpt.pth"
    torch.save({"conv_in.weight": torch.zeros(1), "x": Payload(marker)}, evil)
    with pytest.raises(DdimError, match="refusing"):
        load_checkpoint(evil)
    assert not marker.exists()
    # The payload is real: an unsafe load would have run it.
    control = tmp_path / "control"
    torch.save([Payload(control)], tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.exists()


def test_other_files_are_refused(tmp_path):
    with pytest.raises(DdimError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "notes.txt").write_text("hello world, not weights")
    with pytest.raises(DdimError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "notes.txt")
    torch.save({"step": 3}, tmp_path / "state.pt")
    with pytest.raises(DdimError, match="no U-Net weights"):
        load_checkpoint(tmp_path / "state.pt")


def test_checksum_covers_names_dtypes_and_values():
    a = {"w": torch.zeros(2, 2)}
    assert tensors_sha256(a) == tensors_sha256({"w": torch.zeros(2, 2)})
    assert tensors_sha256(a) != tensors_sha256({"v": torch.zeros(2, 2)})
    assert tensors_sha256(a) != tensors_sha256({"w": torch.zeros(4)})
    assert tensors_sha256(a) != tensors_sha256({"w": torch.zeros(2, 2, dtype=torch.float64)})
    assert tensors_sha256(a) != tensors_sha256({"w": torch.tensor([[0.0, 0], [0, 1e-30]])})


WRITER = """
import sys, torch
from ddim.checkpoint import save_checkpoint
from ddim.config import load_config
from ddim.network.unet import UNet
config = load_config("tiny")
state = UNet.from_config(config.model, config.data.image_size).state_dict()
step = 0
while True:
    step += 1
    for value in state.values():
        value.fill_(step)
    save_checkpoint(sys.argv[1], model_state=state, ema_state=state, config=config, step=step,
                    train_state={"step": step, "blob": torch.full((1 << 18,), step)})
    print(step, flush=True)
"""


def test_sigkill_during_save_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.safetensors"
    rng = random.Random(0)
    for _ in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert writer.stdout.readline().strip(), "the writer died before its first save"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        checkpoint = load_checkpoint(path)
        assert checkpoint.step >= 1
        for value in checkpoint.model_state.values():  # every tensor is from that one save
            assert torch.all(value == checkpoint.step)
        assert checkpoint.load_train_state()["step"] == checkpoint.step
    # The next save clears what a killed one left behind.
    save_tiny(path, load_config("tiny"), step=99, train_state={"step": 99})
    assert not list(tmp_path.glob(".*.tmp"))
    assert len(list(tmp_path.glob("last.train-*.pt"))) == 1


def test_the_same_checkpoint_saved_twice_is_the_same_bytes(tmp_path, config):
    """The safetensors writer orders metadata by a hash map seeded on each call; save_checkpoint
    sorts it, so equal inputs give equal files (and equal SHA-256s in records)."""
    files = [save_tiny(tmp_path / f"{k}.safetensors", config) for k in range(4)]
    assert len({path.read_bytes() for path in files}) == 1
    assert load_checkpoint(files[0]).step == 5
