"""EMA of any half-life after the fact, from the raw-weight snapshots a run's checkpoints hold.

An EMA with a half-life of H images gives the raw weights seen at image count i the weight
2^(−(I − i)/H) at the end, image count I. With snapshots of the raw weights every Δ images, the
same average is approximated by weighting snapshot k (seen at i_k) by 2^(−(I − i_k)/H) times the
images it stands for, normalised over the snapshots at hand; the mass before the first snapshot
is dropped, so a half-life much longer than the snapshots span approaches their plain mean. So a
run keeps one in-run EMA and its checkpoints, and the EMA length is chosen afterwards, by FID.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddim.errors import DdimError


def snapshot_weights(images: Sequence[int], halflife: float) -> list[float]:
    """The normalised weight of each snapshot (taken at `images`, increasing) in an EMA of
    half-life `halflife` images that ends at the last snapshot."""
    if len(images) == 0:
        raise DdimError("no snapshots to average")
    if any(b <= a for a, b in zip(images, images[1:])):
        raise DdimError(f"snapshot image counts must increase, got {list(images)}")
    if not halflife > 0:
        raise DdimError(f"halflife must be > 0 images, got {halflife}")
    end = images[-1]
    spans = [images[0] - (images[1] - images[0]) if len(images) > 1 else images[0] - 1,
             *images[:-1]]  # fmt: skip
    raw = [2.0 ** (-(end - i) / halflife) * (i - previous) for i, previous in zip(images, spans)]
    total = sum(raw)
    return [w / total for w in raw]


@torch.no_grad()
def average_states(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Σ_k weights[k] · states[k], key by key, in float64 then back to each tensor's dtype."""
    if len(states) != len(weights):
        raise DdimError(f"{len(states)} states but {len(weights)} weights")
    keys = states[0].keys()
    for k, state in enumerate(states):
        if state.keys() != keys:
            raise DdimError(f"snapshot {k} holds other tensors than snapshot 0")
    out = {}
    for key in keys:
        total = sum(w * state[key].to(torch.float64) for w, state in zip(weights, states))
        out[key] = total.to(states[0][key].dtype)
    return out
