"""The diffusers layout: U-Net weights between the official names (ours) and a diffusers folder.

A diffusers folder for DDIM sampling is

    model_index.json                          {"_class_name": "DDIMPipeline", ...}
    unet/config.json                          `UNet2DModel` arguments
    unet/diffusion_pytorch_model.safetensors  the weights under diffusers' names
    scheduler/scheduler_config.json           `DDIMScheduler` arguments (the β schedule)

Writing and reading it needs only this module; diffusers itself is needed only to check an
export (`verify_diffusers`), and is imported then. The parameter names map one to one:

    temb.dense.{0,1}        time_embedding.linear_{1,2}
    down.{i}.block.{j}      down_blocks.{i}.resnets.{j}       (temb_proj -> time_emb_proj,
    up.{i}.block.{j}        up_blocks.{L-1-i}.resnets.{j}      nin_shortcut -> conv_shortcut)
    *.attn.{j}, mid.attn_1  *.attentions.{j}, mid_block.attentions.0
                            (norm -> group_norm, q/k/v -> to_q/to_k/to_v, proj_out -> to_out.0;
                             the 1x1 conv kernels (C, C, 1, 1) become linear weights (C, C))
    down.{i}.downsample     down_blocks.{i}.downsamplers.0
    up.{i}.upsample         up_blocks.{L-1-i}.upsamplers.0
    mid.block_{1,2}         mid_block.resnets.{0,1}
    norm_out                conv_norm_out

where L is the number of levels (diffusers numbers its up blocks from the bottom).

What diffusers has no argument for goes into private keys (diffusers ignores keys starting with
"_"), and is read back, so that a folder converted back, or sampled, is the config it came from:
in `scheduler/scheduler_config.json`, our sampling defaults (`_ddim_sampling`: diffusers has no
`quad` spacing) and the data section's dataset name and flip (`_ddim_data`: the dataset decides
`ddim table`'s default spacing; where the data lay is not exported); in `unet/config.json`,
which weights the export holds (`_ddim_weights`: EMA or raw) and the model options a
`UNet2DModel` has no argument for (`_ddim_model`: `var_type`, the DDPM variance by default,
`ema`, `ema_rate`). Weights are written as they are, or in float16 (`half`).

Reading a scheduler, every option our samplers do not implement is refused rather than ignored
(`_check_scheduler`): trained or zero-SNR-rescaled betas, predictions other than ε,
thresholding, a steps offset, ᾱ_{−1} ≠ 1, spacings other than leading and trailing, DDPM
variances other than the small one, and clipping other than our samplers' default (off for
DDIM, on for DDPM, to [−1, 1]). Leading and trailing are our uniform and trailing when S divides
T (diffusers rounds otherwise). What our private keys hold is checked as config values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ddim.checkpoint.weights import (
    Checkpoint,
    check_weights_fit,
    load_weights_only,
    strip_wrapper_prefixes,
)
from ddim.config import Config, DataConfig, DiffusionConfig, ModelConfig, SamplingConfig
from ddim.errors import DdimError
from ddim.files import atomic_write, write_text
from ddim.network.unet import UNet

_RESNET_PARTS = {"temb_proj": "time_emb_proj", "nin_shortcut": "conv_shortcut"}
_ATTN_PARTS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
# Older diffusers files name the attention projections differently.
_OLD_ATTN_PARTS = {"query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_MID = {"block_1": "resnets.0", "attn_1": "attentions.0", "block_2": "resnets.1"}
_SCHEDULES = {"linear": "linear", "quad": "scaled_linear", "sigmoid": "sigmoid"}
# What our config holds that diffusers' arguments do not, exported in private keys and read back.
_MODEL_OPTIONS = ("var_type", "ema", "ema_rate")  # unet/config.json `_ddim_model`
_DATA_OPTIONS = ("dataset", "random_flip")  # scheduler/scheduler_config.json `_ddim_data`
_SPACINGS = {"uniform": "leading", "trailing": "trailing"}
# Scheduler options our samplers implement only at one value: class -> option -> (the value we
# implement, diffusers' default where the file leaves it out, what to do instead).
_DDIM_CLIP = "our DDIM sampler clips x_0 only when asked (clip_x0=True, --clip-x0 on)"
_DDPM_CLIP = "our DDPM sampler clips x_0 to [-1, 1] unless asked not to (clip_x0=False)"
_COMMON_OPTIONS = {
    "trained_betas": (None, None, "give the schedule as a config"),
    "rescale_betas_zero_snr": (False, False, "zero-SNR rescaling is not implemented"),
    "prediction_type": ("epsilon", "epsilon", "only epsilon-prediction is supported"),
    "thresholding": (False, False, "dynamic thresholding is not implemented"),
    "steps_offset": (0, 0, "timesteps are not offset here"),
}
_SCHEDULER_OPTIONS = {
    "DDIMScheduler": {
        **_COMMON_OPTIONS,
        "clip_sample": (False, True, _DDIM_CLIP),
        "set_alpha_to_one": (True, True, "the last step goes to clean data (ᾱ = 1)"),
    },
    "DDPMScheduler": {
        **_COMMON_OPTIONS,
        "clip_sample": (True, True, _DDPM_CLIP),
        "clip_sample_range": (1.0, 1.0, "x_0 is clipped to [-1, 1]"),
        "variance_type": ("fixed_small", "fixed_small", "pass variance='large' per call for β"),
    },
}


def _invert(d: dict[str, str]) -> dict[str, str]:
    """The inverse of a one-to-one mapping."""
    return {v: k for k, v in d.items()}


def diffusers_key(key: str, num_levels: int) -> str:
    """The diffusers `UNet2DModel` name of an official U-Net parameter name."""
    parts = key.split(".")
    head, param = parts[0], parts[-1]
    if head == "temb":
        return f"time_embedding.linear_{int(parts[2]) + 1}.{param}"
    if head in ("conv_in", "conv_out"):
        return key
    if head == "norm_out":
        return f"conv_norm_out.{param}"
    if head == "mid":
        return _rename_part(f"mid_block.{_MID[parts[1]]}", parts[2:], parts[1] == "attn_1")
    if head in ("down", "up") and len(parts) >= 4:
        level = int(parts[1])
        index = level if head == "down" else num_levels - 1 - level
        prefix = f"{head}_blocks.{index}"
        if parts[2] == "block":
            return _rename_part(f"{prefix}.resnets.{parts[3]}", parts[4:], attention=False)
        if parts[2] == "attn":
            return _rename_part(f"{prefix}.attentions.{parts[3]}", parts[4:], attention=True)
        if parts[2] in ("downsample", "upsample"):
            return f"{prefix}.{parts[2]}rs.0.{'.'.join(parts[3:])}"
    raise DdimError(f"no diffusers name for the weight {key!r}")


def _rename_part(prefix: str, rest: list[str], attention: bool) -> str:
    """prefix + the renamed layer + the parameter name, for a resnet or attention layer."""
    table = _ATTN_PARTS if attention else _RESNET_PARTS
    layer = ".".join(rest[:-1])
    return f"{prefix}.{table.get(layer, layer)}.{rest[-1]}"


def official_key(key: str, num_levels: int) -> str:
    """The official U-Net name of a diffusers `UNet2DModel` parameter name (inverse of above)."""
    parts = key.split(".")
    head, param = parts[0], parts[-1]
    if head == "time_embedding":
        return f"temb.dense.{int(parts[1].removeprefix('linear_')) - 1}.{param}"
    if head in ("conv_in", "conv_out"):
        return key
    if head == "conv_norm_out":
        return f"norm_out.{param}"
    if head == "mid_block":
        name = _invert(_MID)[f"{parts[1]}.{parts[2]}"]
        return _unrename_part(f"mid.{name}", parts[3:], parts[1] == "attentions")
    if head in ("down_blocks", "up_blocks") and len(parts) >= 4:
        direction = head.removesuffix("_blocks")
        index = int(parts[1])
        level = index if direction == "down" else num_levels - 1 - index
        if parts[2] == "resnets":
            return _unrename_part(f"{direction}.{level}.block.{parts[3]}", parts[4:], False)
        if parts[2] == "attentions":
            return _unrename_part(f"{direction}.{level}.attn.{parts[3]}", parts[4:], True)
        if parts[2] in ("downsamplers", "upsamplers"):
            return f"{direction}.{level}.{direction}sample.{'.'.join(parts[4:])}"
    raise DdimError(f"no official name for the diffusers weight {key!r}")


def _unrename_part(prefix: str, rest: list[str], attention: bool) -> str:
    """prefix + the official layer name + the parameter name."""
    layer = ".".join(rest[:-1])
    if attention:
        layer = _OLD_ATTN_PARTS.get(layer, _invert(_ATTN_PARTS).get(layer, layer))
    else:
        layer = _invert(_RESNET_PARTS).get(layer, layer)
    return f"{prefix}.{layer}.{rest[-1]}"


def _is_attn_projection(official: str) -> bool:
    """True for the weight of an attention q, k, v or proj_out (a 1x1 conv in the official net)."""
    parts = official.split(".")
    in_attn = "attn" in parts or "attn_1" in parts
    return in_attn and parts[-1] == "weight" and parts[-2] in ("q", "k", "v", "proj_out")


def _num_levels(keys, marker: str) -> int:
    """1 + the largest level index among keys starting with `marker` ('down.' or 'down_blocks.')."""
    levels = [int(k.split(".")[1]) for k in keys if k.startswith(marker)]
    if not levels:
        raise DdimError(f"these weights have no {marker!r} layers: not a DDPM U-Net")
    return 1 + max(levels)


def to_diffusers_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official-named weights -> diffusers-named weights (attention kernels flattened to 2-D)."""
    state = strip_wrapper_prefixes(state)
    num_levels = _num_levels(state, "down.")
    out = {}
    for key, value in state.items():
        if _is_attn_projection(key):
            value = value.reshape(value.shape[0], value.shape[1])
        out[diffusers_key(key, num_levels)] = value
    return out


def from_diffusers_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diffusers-named weights -> official-named weights (attention weights back to 1x1 kernels)."""
    num_levels = _num_levels(state, "down_blocks.")
    out = {}
    for key, value in state.items():
        official = official_key(key, num_levels)
        if _is_attn_projection(official) and value.ndim == 2:
            value = value[:, :, None, None]
        out[official] = value
    return out


def _attention_levels(model: ModelConfig, image_size: int) -> list[bool]:
    """Whether each level of the U-Net has attention blocks."""
    return [image_size // 2**i in model.attn_resolutions for i in range(len(model.ch_mult))]


def diffusers_unet_config(model: ModelConfig, image_size: int) -> dict[str, Any]:
    """`UNet2DModel` arguments for the DDPM U-Net a ModelConfig describes."""
    if not model.resamp_with_conv:
        raise DdimError(
            "diffusers' UNet2DModel always resamples with convolutions: "
            "model.resamp_with_conv=false cannot be exported"
        )
    attn = _attention_levels(model, image_size)
    return {
        "_class_name": "UNet2DModel",
        "sample_size": image_size,
        "in_channels": model.in_channels,
        "out_channels": model.out_ch,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "freq_shift": 1,
        "flip_sin_to_cos": False,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": [model.ch * m for m in model.ch_mult],
        "layers_per_block": model.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": 0,
        "act_fn": "silu",
        "attention_head_dim": None,
        "norm_num_groups": model.num_groups,
        "norm_eps": 1e-6,
        "dropout": model.dropout,
        "resnet_time_scale_shift": "default",
        "add_attention": True,
    }


def diffusers_scheduler_config(config: Config) -> dict[str, Any]:
    """`DDIMScheduler` arguments for a config's β schedule (ᾱ of "t = −1" set to one)."""
    diffusion = config.diffusion
    if diffusion.beta_schedule not in _SCHEDULES:
        raise DdimError(
            f"diffusion.beta_schedule={diffusion.beta_schedule!r} has no diffusers "
            f"equivalent (exportable: {', '.join(_SCHEDULES)})"
        )
    return {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": diffusion.num_diffusion_timesteps,
        "beta_start": diffusion.beta_start,
        "beta_end": diffusion.beta_end,
        "beta_schedule": _SCHEDULES[diffusion.beta_schedule],
        "clip_sample": False,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "timestep_spacing": _SPACINGS.get(config.sampling.skip, "leading"),
        "_ddim_sampling": config.to_dict()["sampling"],  # quad has no diffusers name
        "_ddim_data": {key: config.to_dict()["data"][key] for key in _DATA_OPTIONS},
    }


def export_diffusers(
    checkpoint: Checkpoint, folder: str | Path, *, use_ema: bool = True, half: bool = False
) -> Path:
    """Write a checkpoint as a diffusers DDIMPipeline folder (UNet2DModel + DDIMScheduler): the
    EMA weights (or raw, `use_ema=False`), in float16 if `half`."""
    if checkpoint.config is None:
        raise DdimError(f"{checkpoint.path} records no schedule: give a config to export it")
    folder = Path(folder)
    unet_config = diffusers_unet_config(checkpoint.model_config, checkpoint.image_size)
    unet_config["_ddim_weights"] = checkpoint.weights_label(use_ema)
    model = checkpoint.config.to_dict()["model"]
    unet_config["_ddim_model"] = {key: model[key] for key in _MODEL_OPTIONS}
    scheduler_config = diffusers_scheduler_config(checkpoint.config)
    state = to_diffusers_state(checkpoint.weights(use_ema))
    weights = {k: (v.half() if half else v).contiguous() for k, v in state.items()}
    index = {
        "_class_name": "DDIMPipeline",
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    atomic_write(
        folder / "unet" / "diffusion_pytorch_model.safetensors",
        lambda tmp: safetensors.torch.save_file(weights, tmp, metadata={"format": "pt"}),
    )
    _write_json(folder / "unet" / "config.json", unet_config)
    _write_json(folder / "scheduler" / "scheduler_config.json", scheduler_config)
    _write_json(folder / "model_index.json", index)
    return folder


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomically write indented JSON."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def _read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, with a DdimError naming the file on failure."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DdimError(f"cannot read {str(path)!r}: {error}") from None
    if not isinstance(obj, dict):
        raise DdimError(f"{str(path)!r} does not hold a JSON object")
    return obj


# UNet2DModel arguments that make it the DDPM U-Net: key -> (value needed, diffusers' default).
_REQUIRED_UNET = {
    "time_embedding_type": ("positional", "positional"),
    "freq_shift": (1, 0),
    "flip_sin_to_cos": (False, True),
    "center_input_sample": (False, False),
    "downsample_padding": (0, 1),
    "act_fn": ("silu", "silu"),
    "norm_eps": (1e-6, 1e-5),
    "resnet_time_scale_shift": ("default", "default"),
    "mid_block_scale_factor": (1, 1),
    "class_embed_type": (None, None),
    "num_class_embeds": (None, None),
}


def model_config_from_diffusers(unet: dict[str, Any], source: str) -> tuple[ModelConfig, int]:
    """The ModelConfig and image size of a diffusers `unet/config.json` of the DDPM kind."""
    for key, (needed, default) in _REQUIRED_UNET.items():
        if unet.get(key, default) != needed:
            raise DdimError(
                f"{source}: {key}={unet.get(key, default)!r} is not the DDPM U-Net "
                f"(needs {needed!r})"
            )
    try:
        widths, image_size = list(unet["block_out_channels"]), int(unet["sample_size"])
        down, up = list(unet["down_block_types"]), list(unet["up_block_types"])
        layers = int(unet.get("layers_per_block", 2))
    except (KeyError, TypeError, ValueError) as error:
        raise DdimError(f"{source}: missing or bad UNet2DModel argument {error}") from None
    ch = widths[0]
    attn = [kind == "AttnDownBlock2D" for kind in down]
    expected_up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]
    heads_ok = unet.get("attention_head_dim") in (None, *widths)
    if any(w % ch for w in widths) or up != expected_up or not heads_ok or len(down) != len(widths):
        raise DdimError(
            f"{source}: blocks {down} / {up} with widths {widths} and attention_head_dim="
            f"{unet.get('attention_head_dim')!r} are not a DDPM U-Net"
        )
    model = ModelConfig(
        in_channels=int(unet.get("in_channels", 3)),
        out_ch=int(unet.get("out_channels", 3)),
        ch=ch,
        ch_mult=tuple(w // ch for w in widths),
        num_res_blocks=layers,
        attn_resolutions=tuple(image_size // 2**i for i, a in enumerate(attn) if a),
        dropout=float(unet.get("dropout", 0.0)),
        num_groups=int(unet.get("norm_num_groups", 32)),
        **_recorded(unet, "_ddim_model", _MODEL_OPTIONS, "model", source),
    )
    return model, image_size


def _recorded(config: dict, key: str, names: tuple[str, ...], section: str, source: str) -> dict:
    """The values of our config's `section` that our export recorded under `key` (none in a
    folder written by others); anything else there, or a value out of range, is a DdimError."""
    recorded = config.get(key, {})
    if not isinstance(recorded, dict) or not set(recorded) <= set(names):
        raise DdimError(f"{source}: {key} holds {recorded!r}, not values of {', '.join(names)} "
                        f"as ddim writes them (was the file edited?)")  # fmt: skip
    try:
        Config.from_dict({section: recorded})  # each value checked as a config's
    except DdimError as error:
        raise DdimError(f"{source}: {key}: {error}") from None
    return recorded


def config_from_diffusers(
    model: ModelConfig, image_size: int, scheduler: dict, source: str
) -> Config:
    """A Config from a UNet's ModelConfig and a `DDIMScheduler`/`DDPMScheduler` config dict;
    options our samplers do not implement are refused (`_check_scheduler`)."""
    _check_scheduler(scheduler, source)
    schedule = _invert(_SCHEDULES).get(scheduler.get("beta_schedule", "linear"))
    if schedule is None:
        raise DdimError(
            f"{source}: beta_schedule={scheduler.get('beta_schedule')!r} "
            f"is not one of {', '.join(_SCHEDULES.values())}"
        )
    diffusion = DiffusionConfig(
        beta_schedule=schedule,
        beta_start=float(scheduler.get("beta_start", 0.0001)),
        beta_end=float(scheduler.get("beta_end", 0.02)),
        num_diffusion_timesteps=int(scheduler.get("num_train_timesteps", 1000)),
    )
    recorded = _recorded(scheduler, "_ddim_data", _DATA_OPTIONS, "data", source)
    data = DataConfig(**{"dataset": "unknown", **recorded}, image_size=image_size,
                      channels=model.in_channels)
    sampling = _sampling_from_scheduler(scheduler, source)
    return Config(model=model, diffusion=diffusion, data=data, sampling=sampling)


def _check_scheduler(scheduler: dict, source: str) -> None:
    """Refuse a scheduler class or option value that our samplers would not honour."""
    name = scheduler.get("_class_name", "DDIMScheduler")
    if name not in _SCHEDULER_OPTIONS:
        raise DdimError(
            f"{source}: a {name}; ddim reads the schedule of a "
            f"{' or '.join(_SCHEDULER_OPTIONS)} only"
        )
    for key, (needed, default, instead) in _SCHEDULER_OPTIONS[name].items():
        value = scheduler.get(key, default)
        if value != needed:
            raise DdimError(
                f"{source}: {key}={value!r} is not what ddim's samplers do ({key}={needed!r}): "
                f"{instead}; refusing rather than ignoring it"
            )
    spacing = scheduler.get("timestep_spacing", "leading")
    if spacing not in _SPACINGS.values():
        raise DdimError(
            f"{source}: timestep_spacing={spacing!r} is not implemented; ddim reads "
            f"{' and '.join(map(repr, _SPACINGS.values()))} (our uniform and trailing)"
        )


def _sampling_from_scheduler(scheduler: dict, source: str) -> SamplingConfig:
    """Our sampling defaults as our export recorded them, else the spacing's; the two agree."""
    spacing = scheduler.get("timestep_spacing", "leading")
    recorded = scheduler.get("_ddim_sampling")
    if recorded is None:
        return SamplingConfig(skip=_invert(_SPACINGS)[spacing])
    sampling = Config.from_dict({"sampling": recorded}).sampling
    if _SPACINGS.get(sampling.skip, "leading") != spacing:
        raise DdimError(
            f"{source}: timestep_spacing={spacing!r} disagrees with _ddim_sampling.skip="
            f"{sampling.skip!r} that ddim wrote beside it (was the file edited?)"
        )
    return sampling


def load_diffusers_folder(folder: str | Path) -> Checkpoint:
    """Read a diffusers pipeline folder (or a bare `unet/` folder) as a Checkpoint."""
    folder = Path(folder)
    unet_dir = folder / "unet" if (folder / "unet").is_dir() else folder
    if not (unet_dir / "config.json").is_file():
        raise DdimError(f"{str(folder)!r} is not a diffusers folder (no unet/config.json)")
    unet = _read_json(unet_dir / "config.json")
    model, image_size = model_config_from_diffusers(unet, str(unet_dir / "config.json"))
    state = from_diffusers_state(_read_diffusers_weights(unet_dir))
    check_weights_fit(state, model, image_size, str(unet_dir))
    # a pipeline keeps its scheduler in scheduler/; a bare U-Net repository (as on the hub:
    # google/ddpm-cifar10-32) beside its config.json
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    if unet_dir == folder:
        scheduler_file = folder / "scheduler_config.json"
    config = None
    if scheduler_file.is_file():
        config = config_from_diffusers(
            model, image_size, _read_json(scheduler_file), str(scheduler_file)
        )
    label = unet.get("_ddim_weights")  # which weights our export holds
    label = label if label in ("ema", "raw") else "unlabelled"
    return Checkpoint(folder, "diffusers", state, None, model, image_size, config,
                      model_weights=label)


def _read_diffusers_weights(unet_dir: Path) -> dict[str, torch.Tensor]:
    """The weights file of a diffusers unet folder: safetensors, else a weights-only .bin."""
    file = unet_dir / "diffusion_pytorch_model.safetensors"
    if file.is_file():
        try:
            return safetensors.torch.load_file(file)
        except Exception as error:
            raise DdimError(f"{str(file)!r} is damaged or truncated: {error}") from None
    file = unet_dir / "diffusion_pytorch_model.bin"
    if file.is_file():
        return load_weights_only(file)
    raise DdimError(f"{str(unet_dir)!r} holds no diffusion_pytorch_model weights")


def require_diffusers():
    """Import diffusers, or raise a DdimError saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise DdimError("diffusers is not installed: pip install diffusers") from None
    return diffusers


@torch.no_grad()
def verify_diffusers(folder: str | Path, net: UNet, *, seed: int = 0) -> float:
    """Max |ε_diffusers − ε_ours| on random inputs: diffusers loads the folder, our net is run."""
    diffusers = require_diffusers()
    other = diffusers.UNet2DModel.from_pretrained(Path(folder) / "unet").float().eval()
    g = torch.Generator().manual_seed(seed)
    size = other.config.sample_size
    x = torch.randn(2, other.config.in_channels, size, size, generator=g)
    t = torch.tensor([0, 999])
    net = net.eval().to("cpu", torch.float32)
    return float((other(x, t).sample - net(x, t)).abs().max())
