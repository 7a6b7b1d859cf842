"""Run configuration as plain, frozen data: five sections laid out like the official DDIM yml files.

    model      the U-Net's shape (the official `model:` section; `ch`, `ch_mult`, ... are its names)
    diffusion  the noise schedule β_1..β_T (`beta_schedule`, `beta_start`, `beta_end`, T)
    data       which images, at what size
    training   optimiser, loss reduction, EMA, seed
    sampling   DDIM defaults: number of steps S, sub-sequence kind, η

A config holds no runtime objects (no devices, no modules, no tensors): it round-trips through
`Config.to_dict()` / `Config.from_dict()` unchanged, and `from_dict` is strict: an unknown key or
a value of the wrong type is a `DdimError` naming the key. Reading and writing YAML, and the
official files' keys, are in `ddim.config.files`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ddim.diffusion.samplers import check_eta
from ddim.diffusion.schedule import BetaSchedule, Skip, make_betas
from ddim.errors import DdimError

# The configs packaged as ddim/configs/<name>.yml.
CONFIG_NAMES: tuple[str, ...] = (
    "cifar10", "celeba", "church", "bedroom", "tiny", "cifar10-cpu"
)


@dataclass(frozen=True)
class ModelConfig:
    """The DDPM U-Net (Ho et al. 2020, App. B); names and meanings as in the official `model:`.

    `num_groups` (not an official key) is the GroupNorm group count: 32 in DDPM and every
    official config. Narrow networks need fewer: with one channel per group the last norm removes
    each channel's mean, and the network cannot predict the per-image mean of ε (docs/training.md).
    Every channel count, ch · ch_mult[i], must be a multiple of it.
    """

    type: Literal["simple"] = "simple"
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    var_type: Literal["fixedlarge", "fixedsmall"] = "fixedlarge"
    ema_rate: float = 0.9999
    ema: bool = True
    resamp_with_conv: bool = True
    num_groups: int = 32

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        _require(self.num_groups >= 1, "model.num_groups", self.num_groups, ">= 1")
        _require(
            len(self.ch_mult) > 0 and min(self.ch_mult) > 0,
            "model.ch_mult",
            self.ch_mult,
            "a non-empty list of positive integers",
        )
        _require(
            self.ch > 0 and self.ch % self.num_groups == 0,
            "model.ch",
            self.ch,
            f"a positive multiple of model.num_groups={self.num_groups} (GroupNorm groups)",
        )
        _require(self.num_res_blocks >= 1, "model.num_res_blocks", self.num_res_blocks, ">= 1")
        _require(0 <= self.dropout < 1, "model.dropout", self.dropout, "in [0, 1)")
        _require(0 <= self.ema_rate <= 1, "model.ema_rate", self.ema_rate, "in [0, 1]")
        _require(self.in_channels >= 1, "model.in_channels", self.in_channels, ">= 1")
        _require(
            self.out_ch == self.in_channels,
            "model.out_ch",
            self.out_ch,
            f"equal to model.in_channels={self.in_channels} (the network predicts ε)",
        )


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process: β_t for t = 1..T (DDPM eq. 2), named as in the official `diffusion:`."""

    beta_schedule: BetaSchedule = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    num_diffusion_timesteps: int = 1000

    def __post_init__(self):
        _require(
            0 < self.beta_start <= self.beta_end < 1,
            "diffusion.beta_start",
            self.beta_start,
            f"in (0, beta_end={self.beta_end}] with beta_end < 1",
        )
        _require(
            self.num_diffusion_timesteps >= 1,
            "diffusion.num_diffusion_timesteps",
            self.num_diffusion_timesteps,
            ">= 1",
        )

    def betas(self) -> torch.Tensor:
        """β_1..β_T (float64) of this schedule (`ddim.diffusion.schedule.make_betas`)."""
        return make_betas(
            self.beta_schedule, self.num_diffusion_timesteps, self.beta_start, self.beta_end
        )


@dataclass(frozen=True)
class DataConfig:
    """Which images: `dataset` names the source, `path` and `subdir` where it is (None: default)."""

    dataset: str = "CIFAR10"
    image_size: int = 32
    channels: int = 3
    random_flip: bool = True
    path: str | None = None
    subdir: str | None = None

    def __post_init__(self):
        _require(self.image_size >= 1, "data.image_size", self.image_size, ">= 1")
        _require(self.channels >= 1, "data.channels", self.channels, ">= 1")


@dataclass(frozen=True)
class TrainingConfig:
    """Adam on the simple loss (DDPM eq. 14); EMA by `model.ema_rate`, or by a half-life in kimg.

    `loss` reduces the squared error over pixels by mean (DDPM) or sum (the official DDIM code);
    `loss_weighting` and `loss_gamma` weight each t's error (`ddim.diffusion.loss.loss_weights`;
    `simple`, the default, is DDPM's eq. 14);
    `antithetic` pairs each t with T − 1 − t in a batch (the official DDIM code);
    `init` is DDPM's TF initialisation (`reference`, see `ddim.network.unet.reference_init_`) or
    PyTorch's default (`pytorch`, the official DDIM code);
    `ema_halflife_kimg`, when set, replaces `model.ema_rate` by 0.5^(batch / (1000 · half-life));
    `ema_rampup_ratio` r, when set, caps the half-life at r times the images seen (EDM), so the
    EMA of a short run averages its recent weights, not its initial ones;
    `lr_decay_fraction` f > 0 lowers the learning rate linearly to 0 over the last share f of the
    run (`n_iters` steps, or a time budget): "warm-up, stable, decay", so that any checkpoint of
    the stable phase can be continued or decayed later (`ddim.training.recipe.Schedule`).
    """

    batch_size: int = 128
    n_iters: int = 5_000_000
    snapshot_freq: int = 5000
    lr: float = 0.0002
    warmup: int = 5000
    grad_clip: float | None = 1.0
    loss: Literal["mean", "sum"] = "mean"
    loss_weighting: Literal["simple", "min_snr", "x0_truncated"] = "simple"
    loss_gamma: float = 5.0
    antithetic: bool = False
    init: Literal["reference", "pytorch"] = "reference"
    ema_halflife_kimg: float | None = None
    ema_rampup_ratio: float | None = None
    lr_decay_fraction: float = 0.0
    seed: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self):
        for key in ("batch_size", "n_iters", "snapshot_freq"):
            _require(getattr(self, key) >= 1, f"training.{key}", getattr(self, key), ">= 1")
        _require(self.lr > 0, "training.lr", self.lr, "> 0")
        _require(self.loss_gamma > 0, "training.loss_gamma", self.loss_gamma, "> 0")
        _require(self.warmup >= 0, "training.warmup", self.warmup, ">= 0")
        _require(
            self.grad_clip is None or self.grad_clip > 0,
            "training.grad_clip",
            self.grad_clip,
            "> 0 or null",
        )
        _require(
            0 <= self.lr_decay_fraction <= 1,
            "training.lr_decay_fraction",
            self.lr_decay_fraction,
            "in [0, 1]",
        )
        for key in ("ema_halflife_kimg", "ema_rampup_ratio"):
            value = getattr(self, key)
            _require(value is None or value > 0, f"training.{key}", value, "> 0 or null")


@dataclass(frozen=True)
class SamplingConfig:
    """DDIM sampling defaults (Song et al. 2021): S steps on a `skip` sub-sequence, noise η."""

    batch_size: int = 64
    steps: int = 50
    skip: Skip = "uniform"
    eta: float = 0.0

    def __post_init__(self):
        _require(self.batch_size >= 1, "sampling.batch_size", self.batch_size, ">= 1")
        _require(self.steps >= 1, "sampling.steps", self.steps, ">= 1")
        check_eta(self.eta, "sampling.eta")


@dataclass(frozen=True)
class Config:
    """A whole run: model, diffusion, data, training and sampling sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self):
        _require(
            self.data.channels == self.model.in_channels,
            "data.channels",
            self.data.channels,
            f"equal to model.in_channels={self.model.in_channels}",
        )
        factor = 2 ** (len(self.model.ch_mult) - 1)
        _require(
            self.data.image_size % factor == 0,
            "data.image_size",
            self.data.image_size,
            f"a multiple of {factor} (the U-Net halves it {factor.bit_length() - 1} times)",
        )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as nested plain dicts of YAML/JSON scalars and lists."""
        return {name: _section_to_dict(getattr(self, name)) for name in _SECTIONS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build a config from nested dicts; missing keys take defaults, unknown keys are errors."""
        if not isinstance(d, dict):
            raise DdimError(f"a config must be a mapping of sections, got {type(d).__name__}")
        for name in d:
            if name not in _SECTIONS:
                raise DdimError(f"unknown key {name!r} (sections: {', '.join(_SECTIONS)})")
        sections = {name: _section_from_dict(name, _or_empty(d.get(name))) for name in _SECTIONS}
        return cls(**sections)


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "sampling": SamplingConfig,
}

def _require(ok: bool, key: str, value: Any, what: str) -> None:
    """Raise a one-line DdimError naming `key` unless `ok`."""
    if not ok:
        raise DdimError(f"{key}={value!r} must be {what}")


def _or_empty(value: Any) -> Any:
    """An absent or empty (`section:` with nothing under it) YAML section reads as {}."""
    return {} if value is None else value


def _section_to_dict(section) -> dict[str, Any]:
    """One section as a dict, tuples turned into lists."""
    return {
        f.name: list(v) if isinstance(v := getattr(section, f.name), tuple) else v
        for f in dataclasses.fields(section)
    }


def _section_from_dict(name: str, d: Any):
    """Build section `name` from a dict, checking every key and value type."""
    cls = _SECTIONS[name]
    if not isinstance(d, dict):
        raise DdimError(f"config section {name!r} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in d.items():
        if key not in hints:
            raise DdimError(f"unknown key '{name}.{key}'")
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
    return cls(**kwargs)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the type `hint` and return it in canonical form (tuples, floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is Literal:
        if value not in args:
            raise DdimError(f"{key}={value!r} must be one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise DdimError(f"{key}={value!r} must be a list")
        return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
    return _coerce_scalar(key, value, hint)


def _coerce_scalar(key: str, value: Any, hint: type) -> Any:
    """Check a scalar: bool is not an int, an int is a float, '1e-4' (YAML 1.1 text) is a float."""
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise DdimError(f"{key}={value!r} must be of type {hint.__name__}")
