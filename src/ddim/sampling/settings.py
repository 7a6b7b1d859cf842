"""Where a sampling run's settings are decided: which sampler walks which timesteps, in batches of
what size, for images of what shape. `sampling_settings` turns a command's arguments and the
config's defaults into one frozen `SamplingSettings`, once, at the head of the command; the
runners and the walk only read it, and the command records it as is.

`SAMPLERS` is the one table of samplers. An entry says how its plan is built over τ (the pairs
of `ddim.diffusion.samplers`, with ᾱ and σ as Python floats), which step is applied to each pair,
whether x_0 is clipped by default, and its one option (η, the DDPM variance) with that option's
default in the config. A `Sampler` is an entry built over one explicit timestep array: what was
asked, as recorded, and τ and the plan, computed once.

Adding a solver is one step function beside eq. 12 in ddim/diffusion/samplers.py, with
`generalized_step`'s signature (a multistep solver reads `previous`, the step before and the x_0
it predicted), and one entry here; every command can then run it (`--sampler` takes its choices
from this table). DPM-Solver++(2M) is such a pair: `dpmpp_2m_step` and the entry "dpmpp-2m".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ddim.config import Config
from ddim.diffusion.eps_model import EpsModel
from ddim.diffusion.samplers import (
    Generator,
    PlanStep,
    Step,
    StepFunction,
    ddim_plan,
    ddpm_plan,
    dpmpp_2m_step,
    generalized_step,
    walk,
)
from ddim.diffusion.schedule import timesteps
from ddim.errors import DdimError
from ddim.sampling.finite import drain_checked

# The DDPM variance that the official code's `model.var_type` names: fixedlarge is β_t (the DDIM
# paper's σ̂), fixedsmall the posterior variance β̃_t.
VARIANCE_OF_VAR_TYPE = {"fixedlarge": "large", "fixedsmall": "small"}


@dataclass(frozen=True)
class SamplerEntry:
    """How one sampler is built: `plan(betas, tau, *option)` lists its pairs, `update` is the step
    applied to each, `clip_x0` its x_0 clipping unless asked, `option` the name of its one option
    (None: it has none) and `default(config)` that option's value when not given."""

    plan: Callable[..., list[PlanStep]]
    update: StepFunction = generalized_step
    clip_x0: bool = False
    option: str | None = None
    default: Callable[[Config], Any] = lambda config: None


SAMPLERS: dict[str, SamplerEntry] = {
    # eq. 12 with σ_τi(η) of eq. 16; x_0 not clipped (clipping makes DDIM non-invertible)
    "ddim": SamplerEntry(ddim_plan, option="eta", default=lambda config: config.sampling.eta),
    # DDPM ancestral sampling, variance β̃ or β (σ̂) as the config's var_type says; x_0 clipped,
    # as the official code does
    "ddpm": SamplerEntry(
        ddpm_plan, clip_x0=True, option="variance",
        default=lambda config: VARIANCE_OF_VAR_TYPE[config.model.var_type],
    ),  # fmt: skip
    # DPM-Solver++(2M): DDIM's η = 0 pairs, each step corrected by the previous x_0 prediction
    "dpmpp-2m": SamplerEntry(lambda betas, tau: ddim_plan(betas, tau, 0.0), update=dpmpp_2m_step),
}


@dataclass(frozen=True)
class Sampler:
    """One sampler over one explicit timestep array: what was asked (name, S, skip, its option,
    clip_x0, None meaning the sampler's default) and what it walks (τ, the plan, the step, the
    clipping), built once by `build_sampler`."""

    name: str
    steps: int
    skip: str
    option: tuple[str, Any] | None
    clip_x0: bool | None
    timesteps: tuple[int, ...]
    plan: tuple[PlanStep, ...]
    update: StepFunction
    clip: bool

    @property
    def network_calls(self) -> int:
        """How many times the network runs per image: |τ|."""
        return len(self.timesteps)

    @property
    def label(self) -> str:
        """S as asked, with the network calls where repeated timesteps were dropped (quad at
        S = 50 walks 49): "S=50, 49 calls"."""
        calls = self.network_calls
        return f"S={self.steps}" + (f", {calls} calls" if calls != self.steps else "")

    def record(self) -> dict:
        """The sampler as it runs, for records: S, skip, its option, its name, and whether x_0 is
        clipped (the sampler's default resolved: what ran, never "as asked")."""
        option = dict([self.option]) if self.option else {}
        return {"steps": self.steps, "skip": self.skip, **option, "kind": self.name,
                "clip_x0": self.clip}  # fmt: skip

    def walk(self, eps_model: EpsModel, x: torch.Tensor, generator: Generator = None
             ) -> Iterator[Step]:  # fmt: skip
        """The walk from x along this sampler's plan (`ddim.diffusion.samplers.walk`)."""
        return walk(eps_model, x, self.plan, generator=generator, clip_x0=self.clip,
                    update=self.update)  # fmt: skip

    def run(self, eps_model: EpsModel, x: torch.Tensor, generator: Generator = None,
            callback: Callable[[Step], None] | None = None) -> torch.Tensor:  # fmt: skip
        """The end of the walk from x (x_0 when x is x_T), `callback` called after every step; an
        end holding NaN or infinity is a DdimError naming the step that made it."""
        return drain_checked(self.walk(eps_model, x, generator), x, self.plan, self.name, callback)


def build_sampler(
    betas: torch.Tensor,
    steps: int,
    skip: str = "uniform",
    name: str = "ddim",
    *,
    clip_x0: bool | None = None,
    tau: Sequence[int] | None = None,
    **option: Any,
) -> Sampler:
    """Sampler `name` over τ (`tau`, or S = `steps` on the `skip` sub-sequence), with its option
    given by name (`eta=0.5`, `variance="large"`); another sampler's option is a DdimError."""
    entry = sampler_entry(name)
    option = {key: value for key, value in option.items() if value is not None}
    for key in sorted(option.keys() - {entry.option}):
        owners = " and ".join(n for n, e in SAMPLERS.items() if e.option == key)
        if not owners:
            raise DdimError(f"{key} is not an option of any sampler", argument=key)
        raise DdimError(f"{key} applies to the {owners} sampler only, not {name}", argument=key)
    if entry.option is not None and entry.option not in option:
        raise DdimError(f"the {name} sampler needs its {entry.option}", argument=entry.option)
    tau = tuple(timesteps(len(betas), steps, skip, betas=betas) if tau is None else tau)
    values = [option[entry.option]] if entry.option else []
    plan = tuple(entry.plan(betas, tau, *values))
    chosen = (entry.option, values[0]) if entry.option else None
    return Sampler(name, steps, skip, chosen, clip_x0, tau, plan, entry.update,
                   entry.clip_x0 if clip_x0 is None else clip_x0)  # fmt: skip


def sampler_entry(name: str) -> SamplerEntry:
    """The SAMPLERS entry called `name`; any other name is a DdimError."""
    if name not in SAMPLERS:
        raise DdimError(f"sampler {name!r} is not one of {', '.join(SAMPLERS)}", argument="sampler")
    return SAMPLERS[name]


@dataclass(frozen=True)
class SamplingSettings:
    """A command's sampling run, decided once: its samplers (one per S), the batch size, and the
    shape (C, H, W) of one image."""

    samplers: tuple[Sampler, ...]
    batch: int
    shape: tuple[int, int, int]

    @property
    def sampler(self) -> Sampler:
        """The sampler of a run with one S."""
        if len(self.samplers) != 1:
            raise DdimError(f"this run has {len(self.samplers)} samplers, not one")
        return self.samplers[0]


def sampling_settings(
    config: Config,
    *,
    sampler: str = "ddim",
    steps: int | Sequence[int] | None = None,
    skip: str | None = None,
    clip_x0: bool | None = None,
    batch: int | None = None,
    **option: Any,
) -> SamplingSettings:
    """The settings of a run from its arguments; what is not given is the config's: S, skip,
    batch size, η (`sampling`), the DDPM variance (`model.var_type`). `steps` may list several S
    (one sampler each, τ computed once for each); `option` is the sampler's (`eta=…`, `variance=…`).
    """
    batch = batch_size(config, batch)
    entry = sampler_entry(sampler)
    if entry.option is not None and option.get(entry.option) is None:
        option = {**option, entry.option: entry.default(config)}
    betas = config.diffusion.betas()
    steps = config.sampling.steps if steps is None else steps
    samplers = tuple(
        build_sampler(betas, S, skip or config.sampling.skip, sampler, clip_x0=clip_x0, **option)
        for S in ([steps] if isinstance(steps, int) else steps)
    )
    return SamplingSettings(samplers, batch, image_shape(config))


def batch_size(config: Config, batch: int | None = None) -> int:
    """Images per batch: `batch`, or the config's; anything but an integer >= 1 is a DdimError."""
    batch = config.sampling.batch_size if batch is None else batch
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise DdimError(f"batch must be >= 1, got {batch}", argument="batch")
    return batch


def image_shape(config: Config) -> tuple[int, int, int]:
    """(C, H, W) of the model's images."""
    return config.model.in_channels, config.data.image_size, config.data.image_size
