"""Foreign checkpoints: the official DDIM `ckpt.pth`, plain state_dicts (the DDPM weights converted
to PyTorch), and safetensors files of bare weights. They record no config: the network is inferred
from the weights' shapes, taking the image size to be 16 · 2^i where i is the first level with
attention (true of every released DDPM/DDIM model), unless the caller gives a config."""

from __future__ import annotations

from pathlib import Path

import torch

from ddim.checkpoint.diffusers import from_diffusers_state
from ddim.checkpoint.weights import (
    Checkpoint,
    check_weights_fit,
    load_weights_only,
    strip_wrapper_prefixes,
)
from ddim.config import ModelConfig
from ddim.errors import DdimError


def load_pickle(path: Path) -> Checkpoint:
    """Read an official `ckpt.pth` list or a plain state_dict saved with torch.save."""
    obj = load_weights_only(path)
    if isinstance(obj, (list, tuple)) and len(obj) >= 4 and isinstance(obj[0], dict):
        model = official_names(obj[0])
        ema = official_names(obj[4]) if len(obj) >= 5 and isinstance(obj[4], dict) else None
        checkpoint = foreign_checkpoint(path, "official", model, ema)
        checkpoint.step = obj[3] if isinstance(obj[3], int) else None
        train = {"optimizer": obj[1], "epoch": obj[2], "step": obj[3]}
        checkpoint.train_state_loader = lambda: train
        return checkpoint
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return foreign_checkpoint(path, "state_dict", official_names(obj), None)
    raise DdimError(f"{str(path)!r} holds no U-Net weights (neither a state_dict nor a ckpt.pth)")


def official_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights under the official key names: wrapper prefixes dropped, diffusers names mapped."""
    state = strip_wrapper_prefixes(state)
    if any(key.startswith("down_blocks.") for key in state):
        state = from_diffusers_state(state)
    return state


def foreign_checkpoint(path: Path, kind: str, model: dict, ema: dict | None) -> Checkpoint:
    """A checkpoint without a recorded config: the architecture is inferred from the weights."""
    model_config, image_size = infer_model_config(model, source=str(path))
    check_weights_fit(model, model_config, image_size, str(path))
    if ema is not None:
        check_weights_fit(ema, model_config, image_size, f"{path} (EMA weights)")
    single = "raw" if kind == "official" else "unlabelled"  # ckpt.pth: [model, …, ema]
    return Checkpoint(path, kind, model, ema, model_config, image_size, model_weights=single)


def infer_model_config(state: dict, source: str = "weights") -> tuple[ModelConfig, int]:
    """The ModelConfig and image size that official-named U-Net weights were made for."""
    try:
        ch, in_channels = state["conv_in.weight"].shape[:2]
        levels = sorted({int(k.split(".")[1]) for k in state if k.startswith("down.")})
        ch_mult = tuple(state[f"down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
        num_res_blocks = len({k.split(".")[3] for k in state if k.startswith("down.0.block.")})
        out_ch = int(state["conv_out.weight"].shape[0])
    except (KeyError, ValueError, IndexError) as error:
        raise DdimError(f"{source} does not hold DDPM U-Net weights (no {error})") from None
    if levels != list(range(len(levels))):  # a forged down.99999 would claim 2^99999 px images
        raise DdimError(f"{source} does not hold DDPM U-Net weights: its levels are down."
                        f"{', down.'.join(map(str, levels[:4]))}, not down.0 to down.N")
    attn_levels = [i for i in levels if f"down.{i}.attn.0.q.weight" in state]
    if not attn_levels:
        raise DdimError(f"cannot infer the image size of {source} (no attention): give a config")
    image_size = 16 * 2 ** attn_levels[0]
    model = ModelConfig(
        in_channels=int(in_channels),
        out_ch=out_ch,
        ch=int(ch),
        ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
        attn_resolutions=tuple(image_size // 2**i for i in attn_levels),
        dropout=0.0,
        resamp_with_conv=len(levels) == 1 or "down.0.downsample.conv.weight" in state,
    )
    return model, image_size
