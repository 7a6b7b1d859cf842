"""The paper's experiments as library functions: reconstruction error against S (Table 2) and the
FID grid of η and S (Table 1), with the paper's numbers beside ours.

Images come in and go out as uint8 (N, C, H, W). The samplers are built once by the command
(`ddim.sampling.settings`) and applied by the runners of `ddim.sampling.runners`; nothing here
reads files or flags except the few helpers that say so. The FID table takes its scorer as an
argument, so its bookkeeping (cells, resuming, tables, the plot) runs without Inception.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ddim.data import to_model_range, to_uint8
from ddim.diffusion.eps_model import EpsModel
from ddim.diffusion.schedule import timesteps
from ddim.sampling.runners import reconstruct_images
from ddim.sampling.settings import Sampler, build_sampler

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


# --- reconstruction (Table 2) ------------------------------------------------------------------


def reconstruction_mse(x: torch.Tensor, x_rec: torch.Tensor) -> float:
    """Per-dimension MSE on the [0, 1] scale: mean of ((x_rec + 1)/2 − (x + 1)/2)² (Table 2)."""
    a, b = (x.double() + 1) / 2, (x_rec.double() + 1) / 2
    return float(((b - a) ** 2).mean())


def reconstruction_study(
    eps_model: EpsModel,
    images: torch.Tensor,
    samplers: Sequence[Sampler],
    *,
    batch: int,
    device: torch.device | str,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict], list[torch.Tensor]]:
    """For each deterministic sampler (one per S): MSE, network calls per image (2 × |τ|),
    seconds; and the uint8 reconstructions.

    The MSE is computed on the float reconstructions, before rounding to uint8, against the
    dequantised originals x = u / 127.5 − 1.
    """
    x = to_model_range(images)
    rows, recs = [], []
    for sampler in samplers:
        start = time.perf_counter()
        x_rec = reconstruct_images(eps_model, sampler, images, batch=batch, device=device,
                                   progress=progress)  # fmt: skip
        seconds = time.perf_counter() - start
        rows.append({"steps": sampler.steps, "mse": reconstruction_mse(x, x_rec),
                     "network_calls": 2 * sampler.network_calls, "seconds": seconds})
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


# --- the FID grid (Table 1) --------------------------------------------------------------------


# A cell's sampler as table.json records it: every field, those its sampler does not take at
# these values (a stored cell is reused only when its record is equal).
CELL_SAMPLER_FIELDS = {"eta": 0.0, "variance": "small"}


@dataclass(frozen=True)
class TableCell:
    """One cell of Table 1: its row ("eta=0.5", or "sigma_hat" for DDPM with β) and its sampler."""

    row: str
    sampler: Sampler

    @property
    def key(self) -> str:
        """A stable name for the cell in table.json."""
        return f"{self.row},S={self.sampler.steps}"

    def sampler_record(self) -> dict:
        """The cell's sampler as table.json records it."""
        s = self.sampler
        fields = {**CELL_SAMPLER_FIELDS, **dict([s.option] if s.option else [])}
        return {"steps": s.steps, "skip": s.skip, "eta": fields["eta"], "kind": s.name,
                "variance": fields["variance"], "clip_x0": s.clip_x0}  # fmt: skip


def table_cells(
    betas: torch.Tensor, steps_list: Sequence[int], etas: Sequence[float], sigma_hat: bool,
    skip: str,
) -> list[TableCell]:  # fmt: skip
    """The Table 1 cells: DDIM(η) for each η and S, plus DDPM σ̂ rows if asked; τ is computed once
    per S and shared by its column.

    S = T walks all T steps (uniform), whatever `skip`: the paper's S = 1000 column is the full
    chain, which `quad` would not give (its grid stops at 0.8·T).
    """
    cells = []
    for S in steps_list:
        cell_skip = "uniform" if S == len(betas) else skip
        tau = tuple(timesteps(len(betas), S, cell_skip, betas=betas))
        for eta in etas:
            sampler = build_sampler(betas, S, cell_skip, "ddim", eta=float(eta), tau=tau)
            cells.append(TableCell(f"eta={float(eta):.1f}", sampler))
        if sigma_hat:
            sampler = build_sampler(betas, S, cell_skip, "ddpm", variance="large", tau=tau)
            cells.append(TableCell("sigma_hat", sampler))
    return cells


def run_table(
    cells: Sequence[TableCell],
    score: Callable[[Sampler], float],
    record: dict,
    save: Callable[[dict], None],
    *,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Score each cell not already in `record` with the same settings; save after every cell.

    `progress(key)` is called once per cell, after it is scored or found already done.
    `record` is {"settings": {...}, "cells": {key: {...}}}; a stored cell is reused only when the
    run-wide settings are equal and its sampler is the same.
    """
    done = record.setdefault("cells", {})
    for cell in cells:
        key, sampler = cell.key, cell.sampler_record()
        old = done.get(key)
        if old is not None and old.get("sampler") == sampler:
            if progress is not None:
                progress(key)
            continue
        start = time.perf_counter()
        fid = float(score(cell.sampler))
        done[key] = {
            "row": cell.row, "steps": cell.sampler.steps, "fid": fid,
            "seconds": time.perf_counter() - start, "sampler": sampler,
            "network_calls_per_image": cell.sampler.network_calls,
            "timesteps": list(cell.sampler.timesteps),
        }  # fmt: skip
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
