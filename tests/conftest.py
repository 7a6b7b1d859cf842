"""Shared fixtures: a tiny untrained checkpoint that every CLI test can sample from, synthetic
training images, small training configs and command lines, and a demo run at reduced size."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddim.checkpoint import save_checkpoint
from ddim.config import apply_overrides, load_config
from ddim.experiments.demo import DemoSettings
from ddim.network.unet import UNet, reference_init_

# The lineage of the shipped weights (src/ddim/assets/cifar10-32px.safetensors): the images its
# training runs saw in all, CPU and H100 together (docs/training.md, "The bundled CIFAR-10 model").
BUNDLED_IMAGES_SEEN = 2_820_608

TINY = [
    "model.ch=32",
    "model.ch_mult=[1, 2]",
    "model.attn_resolutions=[4]",
    "data.image_size=8",
    "sampling.batch_size=4",
    "sampling.steps=4",
]


def save_tiny_checkpoint(path):
    """A randomly initialised 8×8 U-Net saved in our format at `path` (the same weights on every
    call: seeded); its outputs are noise, not zero."""
    config = apply_overrides(load_config("tiny"), TINY)
    torch.manual_seed(0)
    net = UNet.from_config(config.model, config.data.image_size)
    ema = UNet.from_config(config.model, config.data.image_size)
    save_checkpoint(
        path,
        model_state=reference_init_(net).state_dict(),
        ema_state=ema.state_dict(),
        config=config,
        step=0,
    )
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """`save_tiny_checkpoint` in a session folder."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


# --- training at tiny size ----------------------------------------------------------------------

SMALL_TRAINING = [
    "model.ch=32",
    "model.ch_mult=[1, 2]",
    "model.attn_resolutions=[4]",
    "data.image_size=8",
    "training.batch_size=8",
    "training.warmup=5",
    "training.snapshot_freq=1000",
    "model.ema_rate=0.9",
]

SMALL_DEMO = DemoSettings(
    steps=4,
    batch_size=8,
    train_images=64,
    eval_images=16,
    long_eval_images=8,
    sampler_steps=(2, 4, 1000),
    sample_batch=16,
    grid_images=16,
    consistency_steps=(2, 4, 1000),
    consistency_seeds=4,
    detail_steps=3,
    interpolation=4,
    strips=1,
    reconstruction_steps=(2, 5),
    reconstructions=4,
)


def make_blobs(n=64, size=8, seed=0):
    """Smooth synthetic uint8 images (N, 3, size, size): a bright disc on a tinted background."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, 3, size, size), np.uint8)
    for k in range(n):
        cy, cx, r = g.uniform(2, size - 2, 2).tolist() + [g.uniform(1.5, 3)]
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.float64)
        colour = g.uniform(0, 255, 3)
        for c in range(3):
            images[k, c] = np.clip(40 + disc * colour[c], 0, 255)
    return torch.from_numpy(images)


def make_small_config(*extra):
    return apply_overrides(load_config("tiny"), [*SMALL_TRAINING, *extra])


def write_npz_images(path, images):
    np.savez(path, arr_0=images.permute(0, 2, 3, 1).numpy())
    return path


def train_command(*args, env=None):
    return [
        sys.executable,
        "-m",
        "ddim",
        "train",
        "--config",
        "tiny",
        *[a for o in SMALL_TRAINING for a in ("--set", o)],
        "--device",
        "cpu",
        *args,
    ]


@pytest.fixture
def blobs():
    """make_blobs(n=64, size=8, seed=0): synthetic uint8 training images."""
    return make_blobs


@pytest.fixture
def small_config():
    """make_small_config(*overrides): the tiny config at 8×8, batch 8."""
    return make_small_config


@pytest.fixture
def write_npz():
    """write_npz(path, images): uint8 (N, C, H, W) images as an NHWC .npz; returns the path."""
    return write_npz_images


@pytest.fixture
def cli_train():
    """cli_train(*args): the `ddim train` command line for the small config on the CPU."""
    return train_command


@pytest.fixture
def small_demo():
    """Demo settings that run in seconds."""
    return SMALL_DEMO


# --- real data, where a machine has it ---------------------------------------------------------

CIFAR10_ZIP_VARIABLE = "DDIM_TEST_CIFAR10_ZIP"


@pytest.fixture
def cifar10_jpeg_zip():
    """The CIFAR-10 JPEG zip (train/ and test/ class folders) that $DDIM_TEST_CIFAR10_ZIP names;
    the test is skipped where the variable is unset or names no file."""
    value = os.environ.get(CIFAR10_ZIP_VARIABLE)
    if not value:
        pytest.skip(f"{CIFAR10_ZIP_VARIABLE} is not set (the path of the CIFAR-10 JPEG zip)")
    path = Path(value)
    if not path.is_file():
        pytest.skip(f"{CIFAR10_ZIP_VARIABLE} names no file: {value}")
    return path


# --- images -------------------------------------------------------------------------------------


def random_images(n, size=8, seed=0):
    """n random uint8 RGB images (n, size, size, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def chw(array):
    """HWC numpy array as a CHW torch tensor."""
    return torch.from_numpy(array).permute(2, 0, 1)
