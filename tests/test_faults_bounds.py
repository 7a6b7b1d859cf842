"""Forged files are bounded before work, and the API's edges give a result or a DdimError naming
the argument. docs/reliability.md lists the classes and their guarantees.

- A recorded config's counts are checked against the weights' names before any network is laid
  out (ours, foreign weights under a given config, diffusers), so a claim of 100,000 blocks
  per level costs nothing; an image size whose activations cannot fit in memory is refused
  before the network is made, naming the image size, not the batch.
- Samplers take NumPy arrays and betas, float16/bfloat16/float64 latents, any library's integer
  S; seeds outside [0, 2^63 - 1] and slerp of opposite or zero latents are DdimErrors.
"""

from __future__ import annotations

import json
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import ddim
import ddim.cli
from ddim.checkpoint.diffusers import export_diffusers
from ddim.checkpoint.format import metadata_sha256, read_safetensors
from ddim.checkpoint.named import bundled_path
from ddim.config import Config, load_config
from ddim.errors import DdimError
from ddim.files import npz
from ddim.network.unet import UNet

# --- helpers ------------------------------------------------------------------------------------


def forge(source: Path, target: Path, **edits) -> Path:
    """A copy of our checkpoint `source` whose recorded config has `edits` ("section.key":
    value), its metadata checksum recomputed as a forger would: the tensors are unchanged."""
    tensors, raw_meta = read_safetensors(source)
    meta = {key: json.loads(value) for key, value in raw_meta.items()}
    for dotted, value in edits.items():
        section, key = dotted.split(".")
        meta["config"][section][key] = value
        if section == "data":  # the copy beside the config
            meta["data"][key] = value
    meta["metadata_sha256"] = metadata_sha256(meta)
    safetensors.torch.save_file(tensors, target, {k: json.dumps(v) for k, v in meta.items()})
    return target


@pytest.fixture
def nothing_built(monkeypatch):
    """Any U-Net laid out (on any device) fails the test: the refusal must come first."""

    def built(self, *args, **kwargs):
        raise AssertionError("a U-Net was built before the config was checked")

    monkeypatch.setattr(UNet, "__init__", built)


@pytest.fixture
def no_forged_network(monkeypatch):
    """A U-Net of more than 2 residual blocks per level (the forged count) fails the test; the
    network inferred from real weights may be laid out."""
    build = UNet.__init__

    def checked(self, *args, **kwargs):
        if kwargs.get("num_res_blocks", 2) > 2:
            raise AssertionError("the forged config's U-Net was built before it was checked")
        build(self, *args, **kwargs)

    monkeypatch.setattr(UNet, "__init__", checked)


@pytest.fixture
def nothing_run(monkeypatch):
    """The network's forward raises what torch's CPU allocator raises when memory runs out."""

    def forward(self, x, t):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "281474976710656 bytes")

    monkeypatch.setattr(UNet, "forward", forward)


@pytest.fixture
def machine_of_16_gib(monkeypatch):
    """This machine's memory read as 16 GiB, whatever it has."""
    monkeypatch.setattr(npz, "memory_bytes", lambda: 16 * 2**30)


BLOCKS = "model.num_res_blocks is 100000, the weights hold 1 residual blocks per level"

# --- class 4: a forged config is checked against the weights before anything is built ----------


def test_a_config_claiming_100000_blocks_is_refused_before_any_network_is_built(
    tiny_checkpoint, tmp_path, nothing_built
):
    forged = forge(tiny_checkpoint, tmp_path / "forged.safetensors",
                   **{"model.num_res_blocks": 100_000})
    with pytest.raises(DdimError, match=BLOCKS) as error:
        ddim.load_checkpoint(forged)
    assert "down.0.block.0 to 0" in str(error.value) and "\n" not in str(error.value)


def test_ddim_sample_of_a_forged_block_count_is_one_line(tiny_checkpoint, tmp_path, capsys,
                                                         nothing_built):
    forged = forge(tiny_checkpoint, tmp_path / "forged.safetensors",
                   **{"model.num_res_blocks": 100_000})
    capsys.readouterr()
    assert ddim.cli.main(["sample", "--ckpt", str(forged), "--n", "1", "-o",
                          str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddim sample: error: ") and err.count("\n") == 1 and BLOCKS in err


def test_ddim_sample_of_a_forged_block_count_stays_small_in_memory(tiny_checkpoint, tmp_path):
    """The real command, in a process limited to 2 GiB of address space: it used to grow
    without end while laying out 200,000 residual blocks."""
    forged = forge(tiny_checkpoint, tmp_path / "forged.safetensors",
                   **{"model.num_res_blocks": 100_000})
    limit = 2 * 2**30
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
        "from ddim.cli import main\n"
        f"sys.exit(main(['sample', '--ckpt', {str(forged)!r}, '--n', '1', '--device', 'cpu',"
        f" '-o', {str(tmp_path / 'out')!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and BLOCKS in result.stderr.splitlines()[-1]


def test_foreign_weights_under_a_forged_config_build_nothing(tmp_path, no_forged_network):
    state, _ = read_safetensors(bundled_path())
    bare = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    torch.save(bare, tmp_path / "bare.ckpt")
    config = Config.from_dict({"model": {"ch": 64, "num_res_blocks": 100_000, "num_groups": 16}})
    with pytest.raises(DdimError, match="model.num_res_blocks is 100000, the weights hold 2 "):
        ddim.load_checkpoint(tmp_path / "bare.ckpt", config=config)


def test_a_diffusers_folder_claiming_100000_layers_builds_nothing(tiny_checkpoint, tmp_path,
                                                                  monkeypatch):
    folder = export_diffusers(ddim.load_checkpoint(tiny_checkpoint), tmp_path / "hf")
    unet_config = folder / "unet" / "config.json"
    unet = json.loads(unet_config.read_text())
    unet["layers_per_block"] = 100_000
    unet_config.write_text(json.dumps(unet))

    def built(self, *args, **kwargs):
        raise AssertionError("a U-Net was built before the config was checked")

    monkeypatch.setattr(UNet, "__init__", built)
    with pytest.raises(DdimError, match=BLOCKS):
        ddim.load_checkpoint(folder)


def test_bare_weights_with_a_forged_level_index_claim_no_image_size(tiny_checkpoint, tmp_path):
    """Weights whose second level is named down.100000: the image size inferred from the first
    level with attention would be 16 * 2^100000 px."""
    state = ddim.load_checkpoint(tiny_checkpoint).model_state
    forged = {k.replace("down.1.", "down.100000.", 1): v for k, v in state.items()}
    torch.save(forged, tmp_path / "forged.ckpt")
    with pytest.raises(DdimError, match=r"its levels are down.0, down.100000, not down.0 to "):
        ddim.load_checkpoint(tmp_path / "forged.ckpt")


@pytest.mark.parametrize(("edit", "words"), [
    ({"model.ch_mult": [1, 2, 2, 2], "data.image_size": 32, "model.attn_resolutions": [4]},
     "model.ch_mult=[1, 2, 2, 2] has 4 levels, the weights 2 (down.0 to down.1)"),
    ({"model.attn_resolutions": [8]},
     "model.attn_resolutions=[8] at data.image_size=8 puts attention at levels [0], the weights "
     "at levels [1]"),
])  # fmt: skip
def test_other_counts_name_their_field(tiny_checkpoint, tmp_path, nothing_built, edit, words):
    forged = forge(tiny_checkpoint, tmp_path / "forged.safetensors", **edit)
    with pytest.raises(DdimError, match=r"does not fit the U-Net config") as error:
        ddim.load_checkpoint(forged)
    assert words in str(error.value)


def test_metadata_with_an_integer_of_5000_digits_is_damaged_not_a_crash(tiny_checkpoint,
                                                                       tmp_path):
    tensors, raw_meta = read_safetensors(tiny_checkpoint)
    raw_meta["step"] = "1" * 5000
    safetensors.torch.save_file(tensors, tmp_path / "long.safetensors", raw_meta)
    with pytest.raises(DdimError, match="has damaged metadata"):
        ddim.load_checkpoint(tmp_path / "long.safetensors")


# --- class 4: an image size that cannot fit is refused before the network is made ---------------

IMAGE_SIZE = "runs at 4096x4096 px: one image's activations need at least"


def test_a_forged_4096_px_image_size_is_refused_before_sampling(tmp_path, machine_of_16_gib,
                                                                nothing_run):
    """The bundled 32 px weights under a recorded config of 4096 px images (attention moved to
    the level it then sits at), on a machine of 16 GiB: one image needs 26 GiB at least."""
    forged = forge(bundled_path(), tmp_path / "forged.safetensors",
                   **{"data.image_size": 4096, "model.attn_resolutions": [2048]})
    with pytest.raises(DdimError, match=IMAGE_SIZE) as error:
        ddim.load_model(forged)
    assert "not the batch size" in str(error.value) and error.value.argument is None


def test_ddim_sample_of_a_forged_image_size_names_it_not_the_batch(tmp_path, capsys,
                                                                   machine_of_16_gib,
                                                                   nothing_run):
    forged = forge(bundled_path(), tmp_path / "forged.safetensors",
                   **{"data.image_size": 4096, "model.attn_resolutions": [2048]})
    capsys.readouterr()
    code = ddim.cli.main(["sample", "--ckpt", str(forged), "--n", "1", "--batch", "1",
                          "--steps", "1", "--device", "cpu", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and IMAGE_SIZE in err
    assert "not the batch size" in err and "smaller --batch" not in err


@pytest.mark.parametrize("size", [2**17, 2**1000])
def test_an_image_size_no_machine_holds_is_refused_as_is(tiny_checkpoint, tmp_path, nothing_run,
                                                          size):
    """2^17 px: terabytes for one image, on any machine; 2^1000 px: more bytes than a float
    holds, said as a power of 2."""
    forged = forge(tiny_checkpoint, tmp_path / "forged.safetensors",
                   **{"data.image_size": size, "model.attn_resolutions": [size // 2]})
    with pytest.raises(DdimError, match=f"runs at {size}x{size} px: one image's activations "
                                        "need at least [0-9.e+^]+ GiB"):
        ddim.load_model(forged)


def test_the_sampling_stage_check_names_the_batch_and_how_many_fit(machine_of_16_gib):
    from ddim.checkpoint.weights import activation_bytes, check_activations_fit

    model = load_config("cifar10").model
    one = activation_bytes(model, 256)
    check_activations_fit(model, 256, batch=(16 * 2**30) // one)  # as many as fit: no error
    with pytest.raises(DdimError, match=rf"^batch=1000 of 256x256 px images needs at least "
                                        rf".*; at most {(16 * 2**30) // one} fit") as error:
        check_activations_fit(model, 256, batch=1000)
    assert error.value.argument == "batch"
    with pytest.raises(DdimError, match="runs at 4096x4096 px"):
        check_activations_fit(model, 4096, batch=1)


def test_on_a_gpu_the_gpus_memory_is_what_counts(monkeypatch, machine_of_16_gib):
    """A GPU of 8 GiB on a host of 16: the GPU's memory is compared (faked: no GPU needed)."""
    from types import SimpleNamespace

    from ddim.checkpoint.weights import check_activations_fit, device_memory_bytes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(total_memory=8 * 2**30))
    assert device_memory_bytes("cuda:0") == 8 * 2**30 and device_memory_bytes("cpu") == 16 * 2**30
    model = load_config("cifar10").model
    with pytest.raises(DdimError, match=r"more than the 8 GiB of memory of cuda:0"):
        check_activations_fit(model, 2048, device="cuda:0")
    check_activations_fit(model, 32, batch=64, device="cuda:0")


class PeakMemory(TorchDispatchMode):
    """The largest total of tensor bytes alive at once among the tensors ops make."""

    def __init__(self, held: int = 0):
        super().__init__()
        self.live, self.peak, self.seen = held, held, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if key in self.seen or size == 0:
                    continue  # a view of a tensor already counted
                self.seen.add(key)
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, key, size)
        return out

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self.seen.discard(key)


@pytest.mark.parametrize(("name", "size"), [("bundled", 32), ("bundled", 64), ("tiny", 64),
                                            ("tiny", 128)])
def test_the_activation_estimate_is_the_measured_peak_within_3_percent(name, size):
    """One float32 forward on the CPU; tiny at 128 px holds its 64 x 64 px middle attention's
    4096 x 4096 scores (the largest term there), the bundled network its skip connections."""
    from ddim.checkpoint.weights import activation_bytes

    model = ddim.load_checkpoint("bundled").config.model if name == "bundled" else (
        load_config("tiny").model)
    net = UNet.from_config(model, size).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad(), PeakMemory(held=x.untyped_storage().nbytes()) as memory:
        net(x, torch.zeros(1, dtype=torch.long))
    assert activation_bytes(model, size) == pytest.approx(memory.peak, rel=0.03)


# --- class 9: the API's edges --------------------------------------------------------------------

BETAS = ddim.make_betas("linear", 1000)


def toy(x, t):
    """A deterministic ε-model that works in any float dtype."""
    return 0.1 * x + 1e-4 * t.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def x_T():
    return ddim.randn((2, 3, 4, 4), torch.Generator().manual_seed(0))


CALLS = {
    "sample": lambda b, x, s: ddim.sample(toy, x, b, steps=s, eta=0.5,
                                          generator=ddim.generators_from_seeds([1, 2])),
    "sample_ddpm": lambda b, x, s: ddim.sample_ddpm(toy, x, b, steps=s,
                                                    generator=torch.Generator().manual_seed(1)),
    "sample_dpmpp_2m": lambda b, x, s: ddim.sample_dpmpp_2m(toy, x, b, steps=s),
    "encode": lambda b, x, s: ddim.encode(toy, x, b, steps=s),
    "reconstruct": lambda b, x, s: ddim.reconstruct(toy, x, b, steps=s),
    "interpolate": lambda b, x, s: ddim.interpolate(toy, x[0], x[1], b, steps=s, num=3),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_numpy_betas_and_inputs_give_the_same_result(call):
    expected = CALLS[call](BETAS, x_T(), 10)
    assert torch.equal(CALLS[call](BETAS.numpy(), x_T(), 10), expected)
    assert torch.equal(CALLS[call](BETAS.tolist(), x_T(), 10), expected)
    assert torch.equal(CALLS[call](BETAS, x_T().numpy(), 10), expected)


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("steps", [np.int64(10), np.int32(10), torch.tensor(10)],
                         ids=["np.int64", "np.int32", "tensor"])
def test_integer_step_counts_of_any_library(call, steps):
    assert torch.equal(CALLS[call](BETAS, x_T(), steps), CALLS[call](BETAS, x_T(), 10))


def test_timesteps_take_any_librarys_integers_and_give_python_ints():
    pairs = ((np.int64(1000), 10), (1000, np.int64(10)), (torch.tensor(1000), torch.tensor(10)))
    for T, S in pairs:
        tau = ddim.timesteps(T, S, "quad")
        assert tau == ddim.timesteps(1000, 10, "quad") and {type(t) for t in tau} == {int}
    assert ddim.timesteps(1000, torch.tensor([0, 5, 9])) == [0, 5, 9]


@pytest.mark.parametrize("steps", [10.0, "10", None, True, [0.5, 3]])
def test_steps_that_are_not_integers_are_named(steps):
    with pytest.raises(DdimError, match="^steps") as error:
        ddim.sample(toy, x_T(), BETAS, steps=steps)
    assert error.value.argument == "steps"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("call", list(CALLS))
def test_half_precision_latents_are_computed_in_float32_and_returned_in_their_dtype(call, dtype):
    x = x_T().to(dtype)
    out = CALLS[call](BETAS, x, 10)
    assert out.dtype == dtype
    assert torch.equal(out, CALLS[call](BETAS, x.float(), 10).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_float32_network_samples_half_latents_and_names_float64(tiny_checkpoint, dtype):
    net, _ = ddim.load_model(tiny_checkpoint)
    x = ddim.randn((2, 3, 8, 8), torch.Generator().manual_seed(0)).to(dtype)
    if dtype == torch.float64:
        with pytest.raises(DdimError, match="^x_T is float64 and the network failed") as error:
            ddim.sample(lambda x, t: net(x, t), x, BETAS, steps=2)
        assert error.value.argument == "x_T"
        return
    out = ddim.sample(lambda x, t: net(x, t), x, BETAS, steps=2)
    assert out.dtype == dtype and torch.isfinite(out.float()).all()


def test_integer_latents_are_named():
    with pytest.raises(DdimError, match="^x_0 must be a batch of floats") as error:
        ddim.encode(toy, torch.zeros(2, 3, 4, 4, dtype=torch.uint8), BETAS, steps=2)
    assert error.value.argument == "x_0"


@pytest.mark.parametrize("seeds", [[2**64], [2**63], [-1], [True], [1.5]])
def test_seeds_outside_int64_are_named(seeds):
    with pytest.raises(DdimError, match=r"^seeds\[0\]") as error:
        ddim.generators_from_seeds(seeds)
    assert error.value.argument == "seeds"


def test_seeds_of_any_library_are_the_python_seed():
    made = ddim.generators_from_seeds([np.int64(5), torch.tensor(2**63 - 1)])
    assert [g.initial_seed() for g in made] == [5, 2**63 - 1]


def test_randn_names_a_generator_list_of_the_wrong_length():
    with pytest.raises(DdimError, match="^generator holds 1 per-image") as error:
        ddim.randn((2, 3, 4, 4), ddim.generators_from_seeds([0]))
    assert error.value.argument == "generator"


def test_slerp_of_a_latent_with_itself_is_itself():
    v = torch.randn(48, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ddim.slerp(v, v, 0.3), v)  # a single vector
    z = v.view(1, 3, 4, 4)
    assert torch.equal(ddim.slerp(z, z, 0.3), z)
    torch.testing.assert_close(ddim.slerp(z.numpy(), (2 * z).numpy(), 0.5), 1.5 * z)


def test_slerp_of_opposite_or_zero_latents_is_a_named_error():
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DdimError, match=r"^z1 points opposite to z0 \(image 0\)") as error:
        ddim.slerp(z, -z, 0.5)
    assert error.value.argument == "z1"
    with pytest.raises(DdimError, match=r"^z0 is zero in image 1") as error:
        ddim.slerp(torch.stack([z[0], 0 * z[1]]), z, 0.5)
    assert error.value.argument == "z0"
    with pytest.raises(DdimError, match=r"^z1 holds NaN or infinity in image 0"):
        ddim.slerp(z, torch.full_like(z, float("nan")), 0.5)


def test_load_model_gives_the_config_of_foreign_weights(tmp_path):
    state, _ = read_safetensors(bundled_path())
    bare = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    torch.save(bare, tmp_path / "bare.ckpt")
    with pytest.warns(UserWarning, match="records no config"):
        net, config = ddim.load_model(tmp_path / "bare.ckpt")
    with pytest.warns(UserWarning, match="records no config"):
        inferred = ddim.load_checkpoint(tmp_path / "bare.ckpt")
    assert isinstance(config, Config) and config.model == inferred.model_config
    assert (config.data.image_size, config.data.channels) == (32, 3)
    betas = config.diffusion.betas()  # the README's next line
    assert torch.equal(betas, ddim.make_betas("linear", 1000, 1e-4, 0.02))
