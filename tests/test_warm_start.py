"""Warm starts (`ddim train --init`): a new run begins from another checkpoint's weights, and at
step 0 its network samples exactly what that checkpoint samples, whatever the checkpoint's kind."""

import json
import subprocess

import pytest
import safetensors.torch
import torch
from conftest import BUNDLED_IMAGES_SEEN

import ddim
import ddim.cli
from ddim.checkpoint import bundled_checkpoint, load_checkpoint, load_model, save_checkpoint
from ddim.checkpoint.diffusers import export_diffusers
from ddim.config import apply_overrides, load_config
from ddim.errors import DdimError
from ddim.network.unet import UNet
from ddim.training.state import start_state

CPU = torch.device("cpu")
# A 32x32 network small enough for tests, with attention at 16x16 as weights-only files assume.
NET32 = ["model.ch=32", "model.ch_mult=[1, 2]", "model.attn_resolutions=[16]",
         "data.image_size=32", "training.batch_size=8"]


def config32(*extra):
    return apply_overrides(load_config("tiny"), [*NET32, *extra])


def two_nets(config):
    """Two different random networks of `config` (a raw one and an 'EMA')."""
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(UNet.from_config(config.model, config.data.image_size))
    return nets


def samples(eps_model, config, n=2):
    """Deterministic DDIM samples of `eps_model` from a fixed x_T."""
    shape = (n, 3, config.data.image_size, config.data.image_size)
    x_T = ddim.randn(shape, torch.Generator().manual_seed(0))
    return ddim.sample(eps_model, x_T, config.diffusion.betas(), steps=3, eta=0.0)


def test_a_warm_start_samples_at_step_zero_what_its_checkpoint_samples(tmp_path):
    config = config32()
    net, ema = two_nets(config)
    path = save_checkpoint(tmp_path / "a.safetensors", model_state=net.state_dict(),
                           ema_state=ema.state_dict(), config=config, step=7)
    started = start_state(config, CPU, init=path)
    state, origin = started.state, started.origin
    assert state.step == 0 and started.cpu_seconds == 0.0
    loaded_ema, _ = load_model(path)
    loaded_net, _ = load_model(path, use_ema=False)
    torch.testing.assert_close(samples(state.ema, config), samples(loaded_ema, config),
                               rtol=0, atol=0)
    torch.testing.assert_close(samples(state.net.eval(), config), samples(loaded_net, config),
                               rtol=0, atol=0)
    assert not torch.equal(samples(state.ema, config), samples(state.net, config))
    # the record: where from, and the images the weights had seen (step x the source's batch)
    assert origin["path"] == str(path) and origin["step"] == 7
    assert origin["images_seen"] == 7 * 8 and state.images == 56 and len(origin["sha256"]) == 64


def test_the_bundled_float16_file_starts_a_float32_run_with_its_weights_as_both_sets():
    config = load_config("cifar10-cpu")
    started = start_state(config, CPU, init=bundled_checkpoint())
    state, origin = started.state, started.origin
    reference, _ = load_model(bundled_checkpoint())
    for name, value in reference.state_dict().items():
        assert state.net.state_dict()[name].dtype == torch.float32
        assert torch.equal(state.net.state_dict()[name], value)
        assert torch.equal(state.ema.state_dict()[name], value)
    assert origin["weights"] == "one set (both)" and origin["images_seen"] == BUNDLED_IMAGES_SEEN
    assert origin["path"] == "bundled"  # a name, not where this installation keeps it


def test_the_gpu_config_has_the_bundled_network_and_starts_from_its_weights():
    cpu, gpu = load_config("cifar10-cpu"), load_config("cifar10-gpu")
    assert gpu.model == cpu.model and gpu.data == cpu.data and gpu.diffusion == cpu.diffusion
    started = start_state(gpu, CPU, init=bundled_checkpoint())
    assert started.origin["images_seen"] == BUNDLED_IMAGES_SEEN
    t = gpu.training  # the GPU recipe: large batch, short warm-up, decay over the last quarter
    assert (t.batch_size, t.lr, t.lr_decay_fraction, gpu.model.dropout) == (512, 2e-4, 0.25, 0.0)


def test_a_float16_conversion_keeps_the_images_its_weights_have_seen(tmp_path):
    """A warm-started run's step counts only its own images: the converted file (the bundled
    asset's form) must carry the lineage, or a run started from it would lose its ancestors'."""
    config = config32()
    net, ema = two_nets(config)
    origin = {"path": "bundled", "images_seen": 256_000}
    source = save_checkpoint(tmp_path / "run.safetensors", model_state=net.state_dict(),
                             ema_state=ema.state_dict(), config=config, step=7,
                             extra_meta={"images_seen": 256_056, "cpu_hours": 2.5,
                                         "init": origin})  # fmt: skip
    half = tmp_path / "half.safetensors"
    assert ddim.cli.main(["convert", str(source), str(half), "--half"]) == 0
    started = start_state(config, CPU, init=half)
    assert started.origin["images_seen"] == 256_056 and started.origin["cpu_hours"] == 2.5
    assert load_checkpoint(half).meta["extra"]["init"] == origin


def test_records_name_a_file_as_given_and_the_bundled_model_by_name(tmp_path, monkeypatch):
    config = config32()
    net, _ = two_nets(config)
    save_checkpoint(tmp_path / "a.safetensors", model_state=net.state_dict(), config=config,
                    step=3)
    monkeypatch.chdir(tmp_path)
    started = start_state(config, CPU, init="a.safetensors")
    assert started.origin["path"] == "a.safetensors"  # relative, as given: never made absolute
    assert ddim.cli.main(["convert", "a.safetensors", "b.safetensors"]) == 0
    assert load_checkpoint("b.safetensors").meta["extra"]["converted_from"] == "a.safetensors"
    assert ddim.cli.main(["convert", str(bundled_checkpoint()), "c.safetensors"]) == 0
    converted = load_checkpoint("c.safetensors").meta["extra"]
    assert converted["converted_from"] == "bundled" and "init" in converted


def test_another_architecture_is_refused_naming_the_difference(tmp_path):
    config = config32()
    net, _ = two_nets(config)
    path = save_checkpoint(tmp_path / "a.safetensors", model_state=net.state_dict(),
                           config=config, step=0)
    with pytest.raises(DdimError, match=r"model\.ch 32 in the checkpoint against 64"):
        start_state(config32("model.ch=64"), CPU, init=path)
    with pytest.raises(DdimError, match=r"model\.num_groups"):
        start_state(config32("model.num_groups=16"), CPU, init=path)
    # training-side model keys may change: dropout is not the network's shape
    start_state(config32("model.dropout=0.3"), CPU, init=path)


def test_weights_holding_nan_are_refused(tmp_path):
    config = config32()
    net, _ = two_nets(config)
    state = net.state_dict()
    state["temb.dense.0.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(DdimError, match="non-finite|NaN"):
        start_state(config, CPU, init=path)


def test_an_official_ckpt_pth_gives_its_network_and_its_ema(tmp_path):
    config = config32("model.num_groups=32")
    net, ema = two_nets(config)
    model = {"module." + k: v for k, v in net.state_dict().items()}
    torch.save([model, {}, 3, 1200, dict(ema.named_parameters())], tmp_path / "ckpt.pth")
    started = start_state(config, CPU, init=tmp_path / "ckpt.pth")
    state, origin = started.state, started.origin
    assert origin["kind"] == "official" and origin["step"] == 1200 and origin["images_seen"] == 0
    for name, value in net.state_dict().items():
        assert torch.equal(state.net.state_dict()[name], value)
    for name, value in ema.state_dict().items():
        assert torch.equal(state.ema.state_dict()[name], value)


def test_a_diffusers_folder_gives_one_set_of_weights_as_both(tmp_path):
    pytest.importorskip("diffusers")
    config = config32()
    net, ema = two_nets(config)
    path = save_checkpoint(tmp_path / "a.safetensors", model_state=net.state_dict(),
                           ema_state=ema.state_dict(), config=config, step=0)
    folder = export_diffusers(load_checkpoint(path), tmp_path / "folder")
    started = start_state(config, CPU, init=folder)
    state, origin = started.state, started.origin
    assert origin["kind"] == "diffusers" and origin["sha256"] is None
    for name, value in ema.state_dict().items():  # the export holds the EMA weights
        assert torch.equal(state.net.state_dict()[name], value)
        assert torch.equal(state.ema.state_dict()[name], value)


def test_resume_and_init_exclude_each_other(tmp_path):
    with pytest.raises(DdimError, match="exclude each other"):
        start_state(config32(), CPU, resume=tmp_path, init=tmp_path)


def test_cli_init_records_the_lineage_and_resume_keeps_it(tmp_path, cli_train, tiny_checkpoint,
                                                          blobs, write_npz):
    data = write_npz(tmp_path / "data.npz", blobs(16))
    run = tmp_path / "run"
    args = ["--data", str(data), "--run-dir", str(run), "--workers", "0", "--log-every", "1",
            "--sample-every", "0", "--init", str(tiny_checkpoint), "--set", "training.n_iters=4"]
    subprocess.run(cli_train(*args, "--max-steps", "2"), check=True, capture_output=True)
    record = json.loads((run / "init.json").read_text())
    assert record["path"] == str(tiny_checkpoint) and record["images_seen"] == 0
    first = load_checkpoint(run / "checkpoints" / "ckpt-00000002.safetensors")
    assert first.meta["extra"]["init"] == record and first.meta["extra"]["images_seen"] == 16
    resume = cli_train("--resume", str(run), "--workers", "0", "--sample-every", "0",
                       "--log-every", "1")
    subprocess.run(resume, check=True, capture_output=True)
    last = load_checkpoint(run / "checkpoints" / "ckpt-00000004.safetensors")
    assert last.meta["extra"]["init"] == record and last.meta["extra"]["images_seen"] == 32
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["images_seen"] for line in lines] == [8, 16, 24, 32]
    both = subprocess.run(cli_train(*args, "--resume", str(run)), capture_output=True, text=True)
    assert both.returncode == 2 and "exclude each other" in both.stderr.strip().splitlines()[-1]
