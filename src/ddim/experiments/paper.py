"""The paper's experiments as library functions: encoding, reconstruction (Table 2), latent
interpolation (App. D.5), sample consistency across S (Figs. 4/5) and the FID grid (Table 1).

Images come in and go out as uint8 (N, C, H, W); `ddim.data` converts them to and from [−1, 1].
Every function takes the network as `eps_model(x_t, t)`, the β's, and a device; nothing here reads
files or flags except the few helpers that say so. The FID table takes its scorer as an argument,
so its bookkeeping (cells, resuming, tables, the plot) runs without Inception.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ddim.data import to_model_range, to_uint8
from ddim.diffusion.eps_model import EpsModel
from ddim.diffusion.samplers import (
    generators_from_seeds,
    randn,
    reconstruct,
    sample,
    slerp_path,
)
from ddim.diffusion.schedule import timesteps
from ddim.errors import DdimError
from ddim.generate import SamplerSpec

# The paper's CIFAR-10 FIDs (Song, Meng & Ermon, ICLR 2021, Table 1, CIFAR10 (32 × 32) columns),
# for S = 10, 20, 50, 100, 1000; η = 1.0 and σ̂ are DDPM with β̃ and with β = σ̂.
PAPER_STEPS = (10, 20, 50, 100, 1000)
PAPER_TABLE1_CIFAR10 = {
    "eta=0.0": (13.36, 6.84, 4.67, 4.16, 4.04),
    "eta=0.2": (14.04, 7.11, 4.77, 4.25, 4.09),
    "eta=0.5": (16.66, 8.35, 5.25, 4.46, 4.29),
    "eta=1.0": (41.07, 18.36, 8.01, 5.78, 4.73),
    "sigma_hat": (367.43, 133.37, 32.72, 9.99, 3.17),
}
# The paper's Table 2: reconstruction error (per-dimension MSE on [0, 1]) of CIFAR-10 test images
# encoded and decoded with S steps each, rounded to 1e-4.
PAPER_TABLE2_CIFAR10 = {10: 0.014, 20: 0.0065, 50: 0.0023, 100: 0.0009, 200: 0.0004, 500: 0.0001,
                        1000: 0.0001}


# --- batches ----------------------------------------------------------------------------------


def _batches(n: int, batch: int) -> Iterator[slice]:
    """Slices of `batch` consecutive items covering range(n)."""
    if batch < 1:
        raise DdimError(f"--batch must be >= 1, got {batch}")
    return (slice(s, min(s + batch, n)) for s in range(0, n, batch))


# --- encoding and reconstruction (Table 2) -----------------------------------------------------


def _over_batches(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    *,
    batch: int,
    device: torch.device | str,
    progress: Callable[[int], None] | None,
) -> torch.Tensor:
    """`fn` applied to uint8 images batch by batch, in the model's range on `device`; on the CPU."""
    out = []
    for part in _batches(len(images), batch):
        x_0 = to_model_range(images[part].to(device))
        out.append(fn(x_0).cpu())
        if progress is not None:
            progress(len(x_0))
    return torch.cat(out)


def ode_images(
    walk: Callable,
    eps_model: EpsModel,
    images: torch.Tensor,
    betas: torch.Tensor,
    *,
    steps: int,
    skip: str,
    batch: int,
    device: torch.device | str,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """`walk` (`encode`: x_T by the ODE run upward, eqs. 13/14; `reconstruct`: encode then decode
    with η = 0, Table 2) applied to uint8 images batch by batch; float32 on the CPU."""
    return _over_batches(
        lambda x_0: walk(eps_model, x_0, betas, steps=steps, skip=skip),
        images, batch=batch, device=device, progress=progress,
    )


def reconstruction_mse(x: torch.Tensor, x_rec: torch.Tensor) -> float:
    """Per-dimension MSE on the [0, 1] scale: mean of ((x_rec + 1)/2 − (x + 1)/2)² (Table 2)."""
    a, b = (x.double() + 1) / 2, (x_rec.double() + 1) / 2
    return float(((b - a) ** 2).mean())


def reconstruction_study(
    eps_model: EpsModel,
    images: torch.Tensor,
    betas: torch.Tensor,
    steps_list: Sequence[int],
    *,
    skip: str,
    batch: int,
    device: torch.device | str,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict], list[torch.Tensor]]:
    """For each S: MSE, network calls per image (2 × |τ|), seconds; and the uint8 reconstructions.

    The MSE is computed on the float reconstructions, before rounding to uint8, against the
    dequantised originals x = u / 127.5 − 1.
    """
    x = to_model_range(images)
    rows, recs = [], []
    for S in steps_list:
        start = time.perf_counter()
        x_rec = ode_images(
            reconstruct, eps_model, images, betas, steps=S, skip=skip, batch=batch,
            device=device, progress=progress,
        )
        seconds = time.perf_counter() - start
        calls = 2 * len(timesteps(len(betas), S, skip))
        rows.append({"steps": S, "mse": reconstruction_mse(x, x_rec), "network_calls": calls,
                     "seconds": seconds})
        recs.append(to_uint8(x_rec))
    return rows, recs


def reconstruction_markdown(rows: Sequence[dict], n: int) -> str:
    """Table 2 style markdown: S, MSE (in full and rounded to 1e-4), network calls, seconds."""
    lines = [
        f"Reconstruction error of {n} images, encode S steps + decode S steps (η = 0).",
        "MSE: per-dimension mean of ((x_rec+1)/2 − (x+1)/2)² on the float outputs (before uint8).",
        "",
        "| S | MSE | MSE (to 1e-4, as Table 2) | network calls / image | seconds |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['mse']:.3e} | {r['mse']:.4f} | "
                     f"{r['network_calls']} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


# --- interpolation (App. D.5) ------------------------------------------------------------------


def seed_latents(seeds: Sequence[int], shape: Sequence[int], device) -> torch.Tensor:
    """x_T of `seeds` exactly as `ddim sample` draws them (one generator per seed)."""
    return randn((len(seeds), *shape), generators_from_seeds(seeds, device), device=device)


def interpolate_latents(
    eps_model: EpsModel,
    z0: torch.Tensor,
    z1: torch.Tensor,
    betas: torch.Tensor,
    *,
    num: int,
    steps: int,
    skip: str,
) -> torch.Tensor:
    """Decode the slerp path between two x_T with deterministic DDIM; uint8 (num, C, H, W)."""
    path = slerp_path(z0, z1, num)
    return to_uint8(sample(eps_model, path, betas, steps=steps, skip=skip, eta=0.0))


# --- consistency across S (Figs. 4/5) ----------------------------------------------------------


def shown_steps(num_steps: int, show: int) -> list[int]:
    """`show` step indices evenly spaced over 0..num_steps−1 (distinct, first and last kept)."""
    if show < 1:
        raise DdimError(f"--show must be >= 1, got {show}")
    picks = np.linspace(0, num_steps - 1, min(show, num_steps)).round().astype(int)
    return sorted(set(picks.tolist()))


def trajectory_row(
    eps_model: EpsModel,
    x_T: torch.Tensor,
    betas: torch.Tensor,
    *,
    steps: int,
    skip: str,
    show: int,
) -> torch.Tensor:
    """Predicted x_0 at `show` evenly spaced DDIM steps (η = 0), then the final image; uint8.

    Only the shown predictions are kept (as uint8, on the device); the rest are dropped.
    """
    wanted = set(shown_steps(len(timesteps(len(betas), steps, skip)), show))
    kept: list[torch.Tensor] = []

    def keep(step) -> None:
        if step.index in wanted:
            kept.append(to_uint8(step.x0_pred))

    x_0 = sample(eps_model, x_T, betas, steps=steps, skip=skip, eta=0.0, callback=keep)
    return torch.cat([*kept, to_uint8(x_0)]).cpu()


def pad_rows(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Stack rows of different lengths into one grid batch (blank cells at the ends), and width."""
    width = max(len(r) for r in rows)
    padded = []
    for r in rows:
        blank = torch.zeros((width - len(r), *r.shape[1:]), dtype=r.dtype)
        padded.append(torch.cat([r, blank]))
    return torch.cat(padded), width


# --- the FID grid (Table 1) --------------------------------------------------------------------


def row_label(spec: SamplerSpec) -> str:
    """The Table 1 row a spec belongs to: "eta=0.5", or "sigma_hat" for DDPM with β."""
    return "sigma_hat" if spec.kind == "ddpm" else f"eta={spec.eta:.1f}"


def table_specs(
    steps_list: Sequence[int], etas: Sequence[float], sigma_hat: bool, skip: str, T: int
) -> list[SamplerSpec]:
    """The Table 1 cells: DDIM(η) for each η and S, plus DDPM σ̂ rows if asked.

    S = T walks all T steps (uniform), whatever `skip`: the paper's S = 1000 column is the full
    chain, which `quad` would not give (its grid stops at 0.8·T).
    """
    specs = []
    for S in steps_list:
        cell_skip = "uniform" if S == T else skip
        specs += [SamplerSpec(steps=S, skip=cell_skip, eta=float(eta)) for eta in etas]
        if sigma_hat:
            specs.append(SamplerSpec(steps=S, skip=cell_skip, kind="ddpm", variance="large"))
    return specs


def cell_key(spec: SamplerSpec) -> str:
    """A stable name for a cell in table.json."""
    return f"{row_label(spec)},S={spec.steps}"


def run_table(
    specs: Sequence[SamplerSpec],
    score: Callable[[SamplerSpec], float],
    record: dict,
    save: Callable[[dict], None],
    *,
    T: int,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Score each cell not already in `record` with the same settings; save after every cell.

    `progress(key)` is called once per cell, after it is scored or found already done.
    `record` is {"settings": {...}, "cells": {key: {...}}}; a stored cell is reused only when the
    run-wide settings are equal and its sampler is the same.
    """
    cells = record.setdefault("cells", {})
    for spec in specs:
        key, sampler = cell_key(spec), asdict(spec)
        old = cells.get(key)
        if old is not None and old.get("sampler") == sampler:
            if progress is not None:
                progress(key)
            continue
        start = time.perf_counter()
        fid = float(score(spec))
        cells[key] = {
            "row": row_label(spec), "steps": spec.steps, "fid": fid,
            "seconds": time.perf_counter() - start, "sampler": sampler,
            "network_calls_per_image": spec.network_calls(T),
            "timesteps": timesteps(T, spec.steps, spec.skip),
        }
        save(record)
        if progress is not None:
            progress(key)
    return record


def resume_record(path: Path, settings: dict) -> dict:
    """The table record to continue: the stored one if its settings equal these, else a new one."""
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("settings") == settings:
            return old
    return {"settings": settings, "cells": {}}


def _rows_in_order(cells: dict) -> list[str]:
    """Row labels of the cells: η rows by η, then σ̂."""
    rows = {c["row"] for c in cells.values()}
    etas = sorted((r for r in rows if r != "sigma_hat"), key=lambda r: float(r.split("=")[1]))
    return etas + (["sigma_hat"] if "sigma_hat" in rows else [])


def table_markdown(record: dict, paper: dict | None = PAPER_TABLE1_CIFAR10) -> str:
    """Markdown FID table (rows η and σ̂, columns S) with the paper's number beside each cell."""
    cells = record["cells"]
    steps = sorted({c["steps"] for c in cells.values()})
    head = "| | " + " | ".join(f"S = {S}" for S in steps) + " |"
    lines = [head, "| --- |" + " ---: |" * len(steps)]
    for row in _rows_in_order(cells):
        entries = []
        for S in steps:
            cell = cells.get(f"{row},S={S}")
            ours = "–" if cell is None else f"{cell['fid']:.2f}"
            theirs = _paper_value(paper, row, S)
            entries.append(ours if theirs is None else f"{ours} ({theirs:.2f})")
        name = "σ̂" if row == "sigma_hat" else "η = " + row.split("=")[1]
        lines.append(f"| {name} | " + " | ".join(entries) + " |")
    note = "FID ours (paper, CIFAR-10 Table 1 of Song, Meng & Ermon 2021, where it has the cell)."
    return note + "\n\n" + "\n".join(lines) + "\n"


def _paper_value(paper: dict | None, row: str, S: int) -> float | None:
    """The paper's FID for a row and S, or None."""
    if not paper or row not in paper or S not in PAPER_STEPS:
        return None
    return paper[row][PAPER_STEPS.index(S)]


def table_series(record: dict) -> dict[str, list[tuple[float, float]]]:
    """(S, FID) points per row of a table record, ordered by S, for `report.save_plot`."""
    series: dict[str, list[tuple[float, float]]] = {}
    for row in _rows_in_order(record["cells"]):
        cells = [c for c in record["cells"].values() if c["row"] == row]
        name = "sigma-hat (DDPM, beta)" if row == "sigma_hat" else row  # ASCII: PIL's font
        series[name] = sorted((float(c["steps"]), float(c["fid"])) for c in cells)
    return series
