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

What a checkpoint records is what runs. A `config` given for a checkpoint that records one (ours,
a diffusers folder with its scheduler) must agree with it in every value that decides what the
network samples (`ddim.config.sampling_differences`), else it is refused naming the first
difference; the recorded config is kept. A checkpoint that records none takes the given config,
or has its network inferred from the weights' shapes: `meta["inferred"]` says so, and a warning
(one line on the command line).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ddim.checkpoint.diffusers import load_diffusers_folder
from ddim.checkpoint.foreign import foreign_checkpoint, load_pickle, official_names
from ddim.checkpoint.format import from_ours, is_ours, read_safetensors
from ddim.checkpoint.named import BUNDLED_NAME, bundled_path, resolve_checkpoint
from ddim.checkpoint.weights import (
    Checkpoint,
    check_activations_fit,
    check_finite,
    check_weights_fit,
)
from ddim.config import Config, DataConfig, load_config, sampling_differences
from ddim.errors import DdimError
from ddim.files import cached_file_sha256, path_sha256
from ddim.network.unet import UNet


def load_checkpoint(path: str | Path, *, config: Config | str | None = None) -> Checkpoint:
    """Read any supported checkpoint kind, from a path or a name (`resolve_checkpoint`: a run
    directory, `bundled`, the paper's pretrained weights, a hub id); `config` (Config or name)
    is for checkpoints that record none, and must agree with a recorded one. A pretrained name
    brings the config of its network unless one is given."""
    named = resolve_checkpoint(path)
    checkpoint = _read_checkpoint(named.path)
    check_finite(checkpoint)
    if named.name is not None:
        checkpoint.meta["name"] = named.name
    config = config if config is not None else named.config
    if config is not None:
        return _with_config(checkpoint, config)
    if checkpoint.config is None:
        _note_inferred(checkpoint)
    return checkpoint


def _read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint at `path`, of whichever kind its bytes say."""
    if path.is_dir():
        return load_diffusers_folder(path)
    if not path.is_file():
        raise DdimError(f"no checkpoint file {str(path)!r}")
    if sniff(path) == "safetensors":
        tensors, raw_meta = read_safetensors(path)
        if is_ours(raw_meta):
            return from_ours(path, tensors, raw_meta)
        return foreign_checkpoint(path, "state_dict", official_names(tensors), None)
    return load_pickle(path)


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
    """The checkpoint under a config the caller gave: refused where it differs from a recorded
    config in what decides the samples; taken by weights without one (they must fit it)."""
    if not isinstance(config, Config):
        config = load_config(config)
    if checkpoint.config is not None:
        differences = sampling_differences(checkpoint.config, config)
        if differences:
            named = "; ".join(f"{k} is {a!r} there, {b!r} given" for k, a, b in differences[:3])
            more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
            raise DdimError(
                f"{str(checkpoint.path)!r} records its config, and the config given differs: "
                f"{named}{more}; a checkpoint samples with the config it records: give no "
                "config (--config is for checkpoints that record none)"
            )
        return checkpoint
    for what, state in (("weights", checkpoint.model_state), ("EMA weights", checkpoint.ema_state)):
        if state is not None:
            check_weights_fit(
                state, config.model, config.data.image_size, f"the {what} in {checkpoint.path}"
            )
    checkpoint.config = config
    checkpoint.model_config, checkpoint.image_size = config.model, config.data.image_size
    checkpoint.meta["config_source"] = "given"
    return checkpoint


def _note_inferred(checkpoint: Checkpoint) -> None:
    """Say, in `meta["inferred"]` and a warning, that a checkpoint's network was inferred."""
    model = checkpoint.model_config
    how = "read from unet/config.json" if checkpoint.kind == "diffusers" else (
        "inferred from the weights' shapes")
    note = (
        f"{checkpoint.path.name} records no config: its network was {how} "
        f"(ch={model.ch}, ch_mult={list(model.ch_mult)}, attention at "
        f"{list(model.attn_resolutions)} px, {checkpoint.image_size}x{checkpoint.image_size} "
        "images) and the paper's schedule is assumed (linear beta 1e-4 to 0.02, T = 1000); "
        "give a config to state them"
    )
    checkpoint.meta["inferred"] = note
    checkpoint.meta["config_source"] = "inferred"
    warnings.warn(note, stacklevel=3)


def provenance(checkpoint: Checkpoint, *, use_ema: bool = True) -> dict[str, str]:
    """What a record says about the checkpoint that ran: its kind, which weights
    (`Checkpoint.weights_label`: raw weights it does not hold are refused), and where its config
    came from ("recorded", "given" or "inferred", with the note of what was inferred)."""
    record = {
        "kind": checkpoint.kind,
        "weights": checkpoint.weights_label(use_ema),
        "config": checkpoint.meta.get("config_source", "recorded"),
    }
    if "inferred" in checkpoint.meta:
        record["inferred"] = checkpoint.meta["inferred"]
    if "name" in checkpoint.meta:
        record["name"] = checkpoint.meta["name"]
    return record


def model_from_checkpoint(
    checkpoint: Checkpoint, *, use_ema: bool = True, device: str | torch.device = "cpu"
) -> UNet:
    """The U-Net holding a checkpoint's weights (EMA if asked and present; raw weights a file
    does not hold are refused: `Checkpoint.weights_label`), in eval mode. An image size whose
    activations could not fit in `device`'s memory even for one image, at any precision, is
    refused before the network is made (`check_activations_fit`)."""
    check_activations_fit(checkpoint.model_config, checkpoint.image_size, device=device,
                          bytes_per_value=2, attention_scores=False,
                          source=repr(str(checkpoint.path)))
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
) -> tuple[UNet, Config]:
    """The U-Net of any checkpoint kind, in eval mode on `device`, and the Config it samples
    with: the one the file records, else the one given, else for weights that record none their
    inferred network with the paper's schedule (`config_for_foreign`; the warning and
    `provenance` say it was inferred)."""
    checkpoint = load_checkpoint(path, config=config)
    net = model_from_checkpoint(checkpoint, use_ema=use_ema, device=device)
    return net, config_for_foreign(checkpoint)


def config_for_foreign(checkpoint: Checkpoint) -> Config:
    """The config of a checkpoint, or for weights that carry none, their inferred network and the
    paper's diffusion (linear β from 1e-4 to 0.02, T = 1000)."""
    if checkpoint.config is not None:
        return checkpoint.config
    model = checkpoint.model_config
    data = DataConfig(image_size=checkpoint.image_size, channels=model.in_channels)
    return Config(model=model, data=data)


def checkpoint_name(path: str | Path) -> str:
    """How a checkpoint records its source: `bundled` for the model that ships with the
    package, any other file as given (a record names no installation's folders)."""
    return BUNDLED_NAME if Path(path).resolve() == bundled_path() else str(path)


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file (computed once per process) or of a diffusers folder, given
    by path or by name (`resolve_checkpoint`)."""
    path = resolve_checkpoint(path).path.resolve()
    return path_sha256(path) if path.is_dir() else cached_file_sha256(str(path))
