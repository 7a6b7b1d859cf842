"""Shared fixtures: a tiny untrained checkpoint that every CLI test can sample from."""

import pytest
import torch

from ddim.checkpoint import save_checkpoint
from ddim.config import apply_overrides, load_config
from ddim.unet import UNet, reference_init_

TINY = [
    "model.ch=32",
    "model.ch_mult=[1, 2]",
    "model.attn_resolutions=[4]",
    "data.image_size=8",
    "sampling.batch_size=4",
    "sampling.steps=4",
]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised 8×8 U-Net saved in our format (its outputs are noise, not zero)."""
    config = apply_overrides(load_config("tiny"), TINY)
    torch.manual_seed(0)
    net = UNet.from_config(config.model, config.data.image_size)
    ema = UNet.from_config(config.model, config.data.image_size)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(
        path,
        model_state=reference_init_(net).state_dict(),
        ema_state=ema.state_dict(),
        config=config,
        step=0,
    )
    return path
