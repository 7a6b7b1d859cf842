"""ddim: DDPM training and DDIM sampling, faithful to the papers, tested against exact answers.

The public API fits on one screen; see README.md.
"""

from ddim.checkpoint import load_checkpoint, load_model, save_checkpoint
from ddim.config import Config, apply_overrides, load_config
from ddim.data import load_all, open_dataset, to_model_range, to_uint8
from ddim.diffusion.loss import q_sample, simple_loss, training_timesteps
from ddim.diffusion.oracle import GaussianOracle
from ddim.diffusion.samplers import (
    encode,
    generators_from_seeds,
    interpolate,
    randn,
    reconstruct,
    sample,
    sample_ddpm,
    sample_dpmpp_2m,
    slerp,
)
from ddim.diffusion.schedule import alpha_bars, make_betas, timesteps
from ddim.errors import DdimError
from ddim.network.unet import UNet
from ddim.version import __version__

__all__ = [
    "__version__",
    "Config",
    "DdimError",
    "UNet",
    "apply_overrides",
    "load_checkpoint",
    "load_config",
    "load_model",
    "save_checkpoint",
    "GaussianOracle",
    "alpha_bars",
    "encode",
    "generators_from_seeds",
    "interpolate",
    "load_all",
    "make_betas",
    "open_dataset",
    "q_sample",
    "randn",
    "reconstruct",
    "sample",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "simple_loss",
    "slerp",
    "timesteps",
    "to_model_range",
    "to_uint8",
    "training_timesteps",
]
