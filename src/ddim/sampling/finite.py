"""A walk drained with its output checked: an output holding NaN or infinity is a DdimError that
names the first step which made it and what there can cause it, never images of NaN (black).

The check costs one host sync per batch: after each step two device-side flags are kept (is the
x_0 prediction finite, is the new x finite), and only the last is read; the others are read only
to name the step when the output is not finite.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from ddim.diffusion.samplers import PlanStep, Step
from ddim.errors import DdimError


def drain_checked(
    steps: Iterable[Step],
    x: torch.Tensor,
    plan: Sequence[PlanStep],
    name: str,
    callback: Callable[[Step], None] | None = None,
) -> torch.Tensor:
    """The end of a walk from `x` along `plan`, `callback` called after every step; an end that
    is not finite is a DdimError naming the step where it first was not (`name`: the sampler)."""
    flags = [torch.isfinite(x).all()]
    for step in steps:
        x = step.x
        flags += [torch.isfinite(step.x0_pred).all(), torch.isfinite(x).all()]
        if callback is not None:
            callback(step)
    if not bool(flags[-1]):
        raise DdimError(non_finite_cause(torch.stack(flags).tolist(), plan, name))
    return x


def non_finite_cause(flags: list[bool], plan: Sequence[PlanStep], name: str) -> str:
    """The message for a walk whose flags (input, then x_0 prediction and x of each step) say
    where NaN or infinity first appeared."""
    first = flags.index(False)
    if first == 0:
        return f"the {name} sampler was given a start x that holds NaN or infinity"
    index = (first - 1) // 2
    step, where = plan[index], f"step {index + 1} of {len(plan)}"
    if first % 2:  # the x_0 prediction: the network's ε, or the division by √ᾱ_t
        return (
            f"the {name} sampler's output holds NaN or infinity from {where}: the network's "
            f"output at t={step.t_model}, or x_0 = (x - sqrt(1 - a) eps)/sqrt(a) with a = "
            f"{step.alpha_bar_from:.3g}, is not finite; check the weights (a diverged training "
            "run), the precision and the config's schedule"
        )
    return (
        f"the {name} sampler's output holds NaN or infinity from {where} (t={step.t_from} to "
        f"{step.t_to}): the update overflowed from a finite x_0 prediction; check eta (sigma="
        f"{step.sigma:.3g}) and the config's schedule"
    )
