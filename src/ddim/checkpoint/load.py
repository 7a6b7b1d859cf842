"""One way in: `load_checkpoint` reads any checkpoint kind by its bytes, not its name, and
`load_model` turns it into a U-Net ready to sample.

- our safetensors file (`format`: the checksum is verified, so damaged or edited tensors are an
  error);
- a safetensors file of bare weights (official or diffusers key names), the official
  ermongroup/ddim `ckpt.pth` (a torch.save'd list [model_state, optimizer_state, epoch, step,
  ema_state?] with `module.` prefixes; EMA preferred), a plain state_dict such as the DDPM weights
  converted to PyTorch (`model-790000.ckpt`): `foreign`;
- a diffusers folder (`unet/`, `scheduler/`): `diffusers`.
Pickle-based files are opened only with `torch.load(weights_only=True)`: a file that would run
code, or holds anything but tensors and plain containers, is refused. Weights holding NaN or
infinity are refused whatever the kind.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddim.checkpoint.diffusers import load_diffusers_folder
from ddim.checkpoint.foreign import foreign_checkpoint, load_pickle, official_names
from ddim.checkpoint.format import from_ours, is_ours, read_safetensors
from ddim.checkpoint.weights import Checkpoint, check_finite, check_weights_fit
from ddim.config import Config, DataConfig, load_config
from ddim.errors import DdimError
from ddim.files import cached_file_sha256, path_sha256
from ddim.network.unet import UNet

BUNDLED = "cifar10-32px.safetensors"  # the EMA weights of the CIFAR-10 CPU run, float16


def load_checkpoint(path: str | Path, *, config: Config | str | None = None) -> Checkpoint:
    """Read any supported checkpoint kind; `config` (Config or name) replaces the recorded one."""
    path = Path(path)
    if path.is_dir():
        checkpoint = load_diffusers_folder(path)
    elif not path.is_file():
        raise DdimError(f"no checkpoint file {str(path)!r}")
    elif sniff(path) == "safetensors":
        tensors, raw_meta = read_safetensors(path)
        if is_ours(raw_meta):
            checkpoint = from_ours(path, tensors, raw_meta)
        else:
            checkpoint = foreign_checkpoint(path, "state_dict", official_names(tensors), None)
    else:
        checkpoint = load_pickle(path)
    check_finite(checkpoint)
    if config is not None:
        checkpoint = _with_config(checkpoint, config)
    return checkpoint


def sniff(path: Path) -> str:
    """'safetensors' or 'torch' from a file's first bytes; anything else is a DdimError."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save zip / legacy pickle
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        raise DdimError(f"{str(path)!r} is truncated: its safetensors header runs past the end")
    raise DdimError(f"{str(path)!r} is not a checkpoint: neither safetensors nor torch.save")


def _with_config(checkpoint: Checkpoint, config: Config | str) -> Checkpoint:
    """The same weights under a config the caller chose; the weights must fit its model."""
    if not isinstance(config, Config):
        config = load_config(config)
    for what, state in (("weights", checkpoint.model_state), ("EMA weights", checkpoint.ema_state)):
        if state is not None:
            check_weights_fit(
                state, config.model, config.data.image_size, f"the {what} in {checkpoint.path}"
            )
    checkpoint.config = config
    checkpoint.model_config, checkpoint.image_size = config.model, config.data.image_size
    return checkpoint


def model_from_checkpoint(
    checkpoint: Checkpoint, *, use_ema: bool = True, device: str | torch.device = "cpu"
) -> UNet:
    """The U-Net holding a checkpoint's weights (EMA if asked and present), in eval mode."""
    with torch.device("meta"):
        net = UNet.from_config(checkpoint.model_config, checkpoint.image_size)
    net.load_state_dict(checkpoint.weights(use_ema), strict=True, assign=True)
    return net.to(device=device, dtype=torch.float32).eval()  # fp16-stored weights compute in fp32


def load_model(
    path: str | Path,
    *,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
    config: Config | str | None = None,
) -> tuple[UNet, Config | None]:
    """The U-Net of any checkpoint kind, in eval mode on `device`, and its Config (or None)."""
    checkpoint = load_checkpoint(path, config=config)
    return model_from_checkpoint(checkpoint, use_ema=use_ema, device=device), checkpoint.config


def config_for_foreign(checkpoint: Checkpoint) -> Config:
    """The config of a checkpoint, or for weights that carry none, their inferred network and the
    paper's diffusion (linear β from 1e-4 to 0.02, T = 1000)."""
    if checkpoint.config is not None:
        return checkpoint.config
    model = checkpoint.model_config
    data = DataConfig(image_size=checkpoint.image_size, channels=model.in_channels)
    return Config(model=model, data=data)


def bundled_checkpoint() -> Path:
    """The model that ships with the package (used when no checkpoint is named)."""
    path = Path(__file__).resolve().parents[1] / "assets" / BUNDLED
    if not path.is_file():
        raise DdimError("ckpt is not given, and this installation has no bundled model",
                        argument="ckpt")
    return path


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file (computed once per process) or of a diffusers folder."""
    path = Path(path).resolve()
    return path_sha256(path) if path.is_dir() else cached_file_sha256(str(path))
