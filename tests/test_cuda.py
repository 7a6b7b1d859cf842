"""The CUDA paths against the CPU: sampling equal to the CPU's result in float32, the default
bf16 path near it, bf16 training whose checkpoints load on the CPU, compiled sampling and
training, the same images per seed at two batch sizes, the same data order.

Tests marked `cuda` need a GPU and are skipped without one (`pytest -m cuda tests/test_cuda.py`
runs them alone); where a body runs on the CPU as well, its CPU variant runs everywhere.

Tolerances, stated once:
- float32 on CUDA against float32 on the CPU (cuDNN's TF32 off, which PyTorch otherwise allows
  for convolutions): the same x_T and noise give x_0 within FP32_ATOL and uint8 images within one
  level; the kernels sum in another order, which DDIM's first steps amplify by up to √((1−ᾱ)/ᾱ).
- the default CUDA path (bf16 autocast, NCHW) against float32 on the CPU: a mean
  difference of at most BF16_MEAN_LEVELS uint8 levels (on the CPU bf16 against fp32 measured
  0.3–0.4 level, max 4, for the bundled model at S = 10); the network cast to bf16 (pure bf16)
  within PURE_BF16_MEAN_LEVELS (on the CPU 0.78 level, max 5, 16 seeds at S = 10).
- two batch sizes on CUDA: float32 within one level; the default path within BATCH_MEAN_LEVELS on
  average (cuDNN chooses kernels by batch shape).
"""

import copy
import inspect
import json

import pytest
import torch

import ddim.diffusion.samplers as samplers
from ddim.checkpoint import bundled_checkpoint, load_checkpoint, load_model
from ddim.config import apply_overrides, load_config
from ddim.data import infinite_batches, to_uint8
from ddim.diffusion.loss import simple_loss
from ddim.diffusion.samplers import generators_from_seeds, sample, sample_ddpm
from ddim.diffusion.schedule import alpha_bars
from ddim.network.precision import Precision, eps_model_for, named_precision
from ddim.network.unet import UNet
from ddim.sampling import build_sampler, iterate_images
from ddim.training import init_training, train

FP32_ATOL = 1e-3
BF16_MEAN_LEVELS = 1.5
PURE_BF16_MEAN_LEVELS = 2.0
BATCH_MEAN_LEVELS = 0.5

CUDA_AVAILABLE = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a CUDA GPU")
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, needs_cuda], id="cuda")
DEVICES = [pytest.param("cpu", id="cpu"), CUDA]
SHAPE = (3, 32, 32)
SEEDS = list(range(4))
RANDN = samplers.randn  # the samplers' own noise draw, before any test replaces it


@pytest.fixture(scope="module")
def bundled():
    """The bundled CIFAR-10 network (float32, CPU) and its config: a trained-looking model."""
    return load_model(bundled_checkpoint())


@pytest.fixture
def exact_fp32():
    """cuDNN in true float32: PyTorch lets it use TF32 for convolutions unless told not to
    (cuBLAS's matrix products are float32 by default). Newer PyTorch has a second switch,
    `fp32_precision`, set too where it exists; a probe checks that the convolutions obey."""
    options = dict(enabled=True, benchmark=False, deterministic=False, allow_tf32=False)
    if "fp32_precision" in inspect.signature(torch.backends.cudnn.flags).parameters:
        options["fp32_precision"] = "ieee"
    with torch.backends.cudnn.flags(**options):
        if CUDA_AVAILABLE:
            error = convolution_error(torch.device("cuda"))
            assert error < 1e-5, f"cuDNN convolutions still round like TF32 ({error:.1e})"
        yield


def convolution_error(device) -> float:
    """Relative error of a float32 convolution on `device` against float64 on the CPU: about
    1e-7 in float32, about 1e-3 where TF32 tensor cores round the inputs to 10 mantissa bits."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 16, 16, generator=g, dtype=torch.float64)
    w = torch.randn(64, 64, 3, 3, generator=g, dtype=torch.float64)
    exact = torch.nn.functional.conv2d(x, w, padding=1)
    got = torch.nn.functional.conv2d(x.float().to(device), w.float().to(device), padding=1)
    return ((got.double().cpu() - exact).abs().max() / exact.abs().max()).item()


def noise_from_the_cpu(monkeypatch, seeds):
    """Make every noise draw of the samplers come from CPU generators seeded with `seeds`, copied
    to the device: CUDA generators draw other numbers than CPU ones, so this is how two devices
    sample from the same noise. Returns x_T drawn the same way."""
    generators = generators_from_seeds(seeds)

    def randn(shape, generator, *, device=None, dtype=torch.float32):
        return RANDN(shape, generators, device="cpu", dtype=dtype).to(device)

    monkeypatch.setattr(samplers, "randn", randn)
    return RANDN((len(seeds), *SHAPE), generators)


def run_sampler(monkeypatch, net, betas, kind: str, device: str, precision=None):
    """x_0 for SEEDS on `device` with the CPU's noise: DDIM (η = 0 or 1) or DDPM with σ̂, in
    float32 unless another `precision` is given."""
    eps_model = eps_model_for(copy.deepcopy(net).to(device), precision or Precision())
    x_T = noise_from_the_cpu(monkeypatch, SEEDS).to(device)
    if kind == "ddpm-large":
        x_0 = sample_ddpm(eps_model, x_T, betas, steps=10, skip="quad", variance="large")
    else:
        x_0 = sample(eps_model, x_T, betas, steps=10, skip="quad", eta=float(kind[-1]))
    return x_0.cpu()


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["ddim-eta0", "ddim-eta1", "ddpm-large"])
def test_float32_sampling_on_cuda_equals_the_cpu(monkeypatch, exact_fp32, bundled, kind):
    net, config = bundled
    betas = config.diffusion.betas()
    cpu = run_sampler(monkeypatch, net, betas, kind, "cpu")
    gpu = run_sampler(monkeypatch, net, betas, kind, "cuda")
    error = (gpu - cpu).abs().max().item()
    levels = (to_uint8(gpu).int() - to_uint8(cpu).int()).abs().max().item()
    assert error <= FP32_ATOL and levels <= 1, f"max |Δx_0| {error:.2e}, max {levels} levels"


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize(("precision", "mean_levels"),
                         [("auto", BF16_MEAN_LEVELS), ("pure-bf16", PURE_BF16_MEAN_LEVELS)])
def test_bf16_cuda_sampling_stays_near_float32_on_the_cpu(monkeypatch, bundled, precision,
                                                          mean_levels):  # fmt: skip
    net, config = bundled
    betas = config.diffusion.betas()
    cuda = torch.device("cuda")
    assert named_precision("auto", cuda) == Precision(bf16=True, channels_last=False)
    cpu = to_uint8(run_sampler(monkeypatch, net, betas, "ddim-eta0", "cpu")).int()
    gpu = run_sampler(monkeypatch, net, betas, "ddim-eta0", "cuda",
                      named_precision(precision, cuda))  # fmt: skip
    diff = (to_uint8(gpu).int() - cpu).abs().float()
    assert diff.mean() <= mean_levels, f"mean {diff.mean():.3f}, max {diff.max():.0f} levels"


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_images_per_seed_agree_at_two_batch_sizes_on_cuda(exact_fp32, bundled, precision):
    net, config = bundled
    cuda = torch.device("cuda")
    eps_model = eps_model_for(copy.deepcopy(net).to(cuda), named_precision(precision, cuda))
    # x_T and every step's noise per seed
    sampler = build_sampler(config.diffusion.betas(), 10, "quad", "ddim", eta=1.0)

    def images(batch):
        batches = iterate_images(eps_model, sampler, range(6), SHAPE, batch=batch, device=cuda)
        return torch.cat(list(batches))

    diff = (images(6).int() - images(2).int()).abs().float()
    if precision == "fp32":
        assert diff.max() <= 1, f"max {diff.max():.0f} levels"
    else:
        assert diff.mean() <= BATCH_MEAN_LEVELS, f"mean {diff.mean():.3f}, max {diff.max():.0f}"


@needs_cuda
@pytest.mark.cuda
def test_training_batches_on_cuda_are_the_cpus():
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    cpu = infinite_batches(images, 16, seed=3)
    gpu = infinite_batches(images.cuda(), 16, seed=3)
    for _ in range(4):  # across an epoch's end
        assert torch.equal(next(cpu), next(gpu).cpu())


# --- training -------------------------------------------------------------------------------------

SMALL = ["model.ch=32", "model.ch_mult=[1, 2]", "model.attn_resolutions=[4]", "data.image_size=8",
         "training.batch_size=8", "training.warmup=5", "training.lr=1e-3",
         "training.snapshot_freq=1000", "model.ema_rate=0.9"]  # fmt: skip


def fixed_loss(net, config, images) -> float:
    """The float32 loss of `net` on the CPU at fixed x_0, t and ε: the same numbers before and
    after training, so that the difference is the training's alone."""
    g = torch.Generator().manual_seed(123)
    x_0 = images[:32].float() / 127.5 - 1
    t = torch.randint(0, 1000, (len(x_0),), generator=g)
    noise = torch.randn(x_0.shape, generator=g)
    alpha_bar = alpha_bars(config.diffusion.betas()).float()
    t_ = config.training
    with torch.no_grad():
        return simple_loss(net.eval(), x_0, t, noise, alpha_bar, weighting=t_.loss_weighting,
                           gamma=t_.loss_gamma).item()  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_lowers_the_loss_and_its_checkpoints_load_on_the_cpu(
    tmp_path, blobs, device
):
    config = apply_overrides(load_config("tiny"), [*SMALL, "training.n_iters=40"])
    images = blobs(64)
    before = fixed_loss(init_training(config, torch.device("cpu")).net, config, images)
    train(config, tmp_path, images=images, device=device, amp=True, max_steps=36,
          sample_every=0, log_every=12, progress=False)  # fmt: skip
    last = train(config, tmp_path, images=images, device=device, amp=True, resume=tmp_path,
                 sample_every=0, log_every=2, progress=False)  # resumed on the same device
    checkpoint = load_checkpoint(last)  # on the CPU, whatever wrote it
    state = checkpoint.load_train_state()
    assert checkpoint.step == 40 and state["step"] == 40
    assert all(v.device.type == "cpu" for v in checkpoint.model_state.values())
    net = UNet.from_config(config.model, config.data.image_size)
    net.load_state_dict(checkpoint.model_state)
    after = fixed_loss(net, config, images)
    assert after < 0.7 * before, (before, after)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").open()]
    assert len(losses) == 5 and all(torch.isfinite(torch.tensor(losses)))


# --- compiled paths -------------------------------------------------------------------------------

# One level, one residual block and attention at 8x8: few operations to compile, and the 1x1
# convolutions (attention's projections, 128 channels) whose gradients' strides fused Adam checks.
COMPILED = ["model.ch=128", "model.num_groups=32", "model.ch_mult=[1]",
            "model.attn_resolutions=[8]", "data.image_size=8", "model.num_res_blocks=1",
            "training.batch_size=8", "training.warmup=2", "training.n_iters=3",
            "training.snapshot_freq=1000"]  # fmt: skip


@needs_cuda
@pytest.mark.cuda
def test_compiled_sampling_on_cuda_matches_eager():
    """A small network (compilation takes seconds per graph): --compile's sampling path."""
    config = apply_overrides(load_config("tiny"), COMPILED)
    torch.manual_seed(0)
    net = UNet.from_config(config.model, 8).cuda().eval()  # PyTorch's initialisation: outputs ≠ 0
    cuda = torch.device("cuda")
    eager = eps_model_for(net, named_precision("auto", cuda))
    compiled = eps_model_for(copy.deepcopy(net), named_precision("auto", cuda, compile=True))
    x = torch.randn(4, 3, 8, 8, device=cuda)
    for t in (999, 10):  # both ends of the schedule, one compiled graph
        steps = torch.full((4,), t, device=cuda)
        torch.testing.assert_close(compiled(x, steps), eager(x, steps), atol=3e-2, rtol=3e-2)
    x_0 = sample(compiled, x, config.diffusion.betas(), steps=4)
    assert torch.isfinite(x_0).all()


@needs_cuda
@pytest.mark.cuda
def test_compiled_bf16_training_on_cuda_writes_a_checkpoint(tmp_path, blobs):
    config = apply_overrides(load_config("tiny"), COMPILED)
    last = train(config, tmp_path, images=blobs(32), device="cuda", amp=True, compile=True,
                 sample_every=0, log_every=1, progress=False)  # fmt: skip
    checkpoint = load_checkpoint(last)
    assert checkpoint.step == 3 and not any(k.startswith("_orig_mod") for k in
                                            checkpoint.model_state)  # fmt: skip
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").open()]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
