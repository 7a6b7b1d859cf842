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

A config is checked whole when it is made, however it is made (YAML, `from_dict`, the
constructors): every value is turned into its canonical Python type first (NumPy and PyTorch
scalars are accepted, a bool is not a number), every float must be finite, every value must lie in
its range, and the sections must agree with each other (`Config.__post_init__`: channels, image
size, attention resolutions the network reaches, S ≤ T). The schedule is made once and checked
(`ddim.diffusion.schedule.check_betas`). So a bad value is refused before any work, never when an
optimiser or the first sample grid meets it.

`sampling_differences` says which values two configs of one network differ in that decide what
it samples (everything but the training recipe and where the data lies).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ddim.diffusion.samplers import check_eta
from ddim.diffusion.schedule import BetaSchedule, Skip, make_betas
from ddim.errors import DdimError
from ddim.scalars import as_bool, as_float, as_int

MAX_SEED = 2**63 - 1  # seeds are stored as int64
MAX_TIMESTEPS = 1_000_000  # T: the schedule is made (8 MB) when the config is read

# The configs packaged as ddim/configs/<name>.yml.
CONFIG_NAMES: tuple[str, ...] = (
    "cifar10", "celeba", "church", "bedroom", "cat", "tiny", "cifar10-cpu", "cifar10-gpu"
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
        _canonical(self)
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
            all(r >= 1 for r in self.attn_resolutions),
            "model.attn_resolutions",
            self.attn_resolutions,
            "a list of positive resolutions",
        )
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
        _canonical(self)
        _require(
            0 < self.beta_start <= self.beta_end < 1,
            "diffusion.beta_start",
            self.beta_start,
            f"in (0, beta_end={self.beta_end}] with beta_end < 1",
        )
        _require(
            1 <= self.num_diffusion_timesteps <= MAX_TIMESTEPS,
            "diffusion.num_diffusion_timesteps",
            self.num_diffusion_timesteps,
            f"in [1, {MAX_TIMESTEPS}]",
        )
        try:
            self.betas()  # ᾱ must stay positive in float32 (check_betas)
        except DdimError as error:
            raise DdimError(f"diffusion.beta_schedule={self.beta_schedule!r}: {error}") from None

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
        _canonical(self)
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
        _canonical(self)
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
        for key in ("adam_beta1", "adam_beta2"):  # Adam's moment decays
            value = getattr(self, key)
            _require(0 <= value < 1, f"training.{key}", value, "in [0, 1)")
        _require(self.adam_eps > 0, "training.adam_eps", self.adam_eps, "> 0")
        _require(self.weight_decay >= 0, "training.weight_decay", self.weight_decay, ">= 0")
        _require(0 <= self.seed <= MAX_SEED, "training.seed", self.seed, "in [0, 2^63 - 1]")


@dataclass(frozen=True)
class SamplingConfig:
    """DDIM sampling defaults (Song et al. 2021): S steps on a `skip` sub-sequence, noise η."""

    batch_size: int = 64
    steps: int = 50
    skip: Skip = "uniform"
    eta: float = 0.0

    def __post_init__(self):
        _canonical(self)
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
        reached = [self.data.image_size // 2**i for i in range(len(self.model.ch_mult))]
        never = [r for r in self.model.attn_resolutions if r not in reached]
        _require(
            not never,
            "model.attn_resolutions",
            list(self.model.attn_resolutions),
            f"resolutions the U-Net reaches at data.image_size={self.data.image_size} "
            f"({', '.join(map(str, reached))}); it never reaches {', '.join(map(str, never))}",
        )
        T = self.diffusion.num_diffusion_timesteps
        _require(
            self.sampling.steps <= T,
            "sampling.steps",
            self.sampling.steps,
            f"<= diffusion.num_diffusion_timesteps={T} (S steps on T timesteps)",
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


# Config values that do not decide what a trained network samples: the training recipe (the whole
# `training` section), where the data lies, the model's training-only options (dropout, the EMA
# rate), and how many images share a batch. `model.var_type` (the DDPM variance by default) and
# `model.ema` (EMA or raw weights) do decide it.
NOT_SAMPLING: frozenset[str] = frozenset({
    "data.dataset", "data.path", "data.subdir", "data.random_flip",
    "model.dropout", "model.ema_rate",
    "sampling.batch_size",
})  # fmt: skip


def sampling_differences(recorded: Config, given: Config) -> list[tuple[str, Any, Any]]:
    """(key, recorded value, given value) for each value that decides what a network samples
    (the network, the schedule, the image size and channels, the sampling defaults) where the
    two configs differ; `training` and the values of `NOT_SAMPLING` are not compared."""
    old, new = recorded.to_dict(), given.to_dict()
    return [
        (f"{section}.{key}", value, new[section][key])
        for section, values in old.items() if section != "training"
        for key, value in values.items()
        if value != new[section][key] and f"{section}.{key}" not in NOT_SAMPLING
    ]


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
    """Build section `name` from a dict, checking every key (its constructor checks the values)."""
    cls = _SECTIONS[name]
    if not isinstance(d, dict):
        raise DdimError(f"config section {name!r} must be a mapping, got {d!r}")
    hints = _hints(cls)
    for key in d:
        if key not in hints:
            raise DdimError(f"unknown key '{name}.{key}'")
    return cls(**d)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The type hints of a section's fields."""
    return typing.get_type_hints(cls)


def _canonical(section) -> None:
    """Check every field of a section against its type and store it in canonical form (Python
    scalars, tuples): the first step of every section's __post_init__."""
    name = next(n for n, cls in _SECTIONS.items() if cls is type(section))
    for key, hint in _hints(type(section)).items():
        value = _coerce(f"{name}.{key}", getattr(section, key), hint)
        object.__setattr__(section, key, value)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the type `hint` and return it in canonical form (tuples, floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is Literal:
        if not isinstance(value, (str, bool, int)) or value not in args:
            raise DdimError(f"{key}={value!r} must be one of {', '.join(map(repr, args))}")
        return args[args.index(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise DdimError(f"{key}={value!r} must be a list")
        return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
    return _coerce_scalar(key, value, hint)


_SCALARS = {int: as_int, bool: as_bool, float: functools.partial(as_float, finite=False)}


def _coerce_scalar(key: str, value: Any, hint: type) -> Any:
    """Check a scalar: NumPy and PyTorch scalars become Python ones, bool is not an int, an int
    is a float, '1e-4' (YAML 1.1 text) is a float, and a float must be finite."""
    if hint is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if hint in _SCALARS:
        try:
            result = _SCALARS[hint](value, key)
        except DdimError:
            raise DdimError(f"{key}={value!r} must be of type {hint.__name__}") from None
        _require(hint is not float or math.isfinite(result), key, value, "finite")
        return result
    if isinstance(value, hint):
        return hint(value)
    raise DdimError(f"{key}={value!r} must be of type {hint.__name__}")
