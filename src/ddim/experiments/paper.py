"""The paper's experiments as library functions: reconstruction error against S (Table 2) and the
FID grid of η and S (Table 1), with the paper's numbers beside ours, KID beside FID, and rows the
paper does not have (DPM-Solver++(2M)).

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
from typing import Any, Protocol

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


@dataclass(frozen=True)
class TableRow:
    """A row of Table 1: its key in table.json, its sampler (a name of `SAMPLERS` and that
    sampler's option), and its name in table.md and in the plot (ASCII: PIL's font)."""

    key: str
    sampler: str
    option: tuple[tuple[str, Any], ...]
    label: str
    plot_name: str


# The rows beside the η rows, in the order tables show them: the paper's σ̂ (DDPM with β), and
# DPM-Solver++(2M), the second-order solver on the same timesteps (beyond the paper).
SIGMA_HAT = TableRow("sigma_hat", "ddpm", (("variance", "large"),), "σ̂", "sigma-hat (DDPM, beta)")
DPMPP_2M = TableRow("dpmpp_2m", "dpmpp-2m", (), "DPM-Solver++(2M)", "DPM-Solver++(2M)")
OTHER_ROWS = {row.key: row for row in (SIGMA_HAT, DPMPP_2M)}


def eta_row(eta: float) -> TableRow:
    """The DDIM(η) row: eq. 12 with σ(η) of eq. 16."""
    eta = float(eta)
    return TableRow(f"eta={eta:.1f}", "ddim", (("eta", eta),), f"η = {eta:.1f}", f"eta={eta:.1f}")


def table_rows(etas: Sequence[float], sigma_hat: bool = False, dpmpp_2m: bool = False
               ) -> list[TableRow]:  # fmt: skip
    """The rows asked for: one per η, then σ̂ and 2M if asked."""
    return [*map(eta_row, etas), *([SIGMA_HAT] if sigma_hat else []),
            *([DPMPP_2M] if dpmpp_2m else [])]  # fmt: skip


def row_of(key: str) -> TableRow:
    """The row a table.json key names."""
    return OTHER_ROWS.get(key) or eta_row(float(key.split("=")[1]))


# A cell's sampler as table.json records it: every field, those its sampler does not take at
# these values (a stored cell is reused only when its record is equal).
CELL_SAMPLER_FIELDS = {"eta": 0.0, "variance": "small"}


@dataclass(frozen=True)
class TableCell:
    """One cell of Table 1: its row ("eta=0.5", "sigma_hat", "dpmpp_2m") and its sampler."""

    row: str
    sampler: Sampler

    @property
    def key(self) -> str:
        """A stable name for the cell in table.json."""
        return f"{self.row},S={self.sampler.steps}"

    def sampler_record(self) -> dict:
        """The cell's sampler as table.json records it (clipping as it ran)."""
        s = self.sampler
        fields = {**CELL_SAMPLER_FIELDS, **dict([s.option] if s.option else [])}
        return {"steps": s.steps, "skip": s.skip, "eta": fields["eta"], "kind": s.name,
                "variance": fields["variance"], "clip_x0": s.clip}  # fmt: skip


def table_cells(
    betas: torch.Tensor, steps_list: Sequence[int], rows: Sequence[TableRow], skip: str
) -> list[TableCell]:
    """The Table 1 cells: each row's sampler at each S; τ is computed once per S and shared by
    its column.

    S = T walks all T steps (uniform), whatever `skip`: the paper's S = 1000 column is the full
    chain, which `quad` would not give (its grid stops at 0.8·T).
    """
    cells = []
    for S in steps_list:
        cell_skip = "uniform" if S == len(betas) else skip
        tau = tuple(timesteps(len(betas), S, cell_skip, betas=betas))
        for row in rows:
            sampler = build_sampler(betas, S, cell_skip, row.sampler, tau=tau, **dict(row.option))
            cells.append(TableCell(row.key, sampler))
    return cells


class CellScores(Protocol):
    """What a table's scorer returns (`ddim.evaluation.Scores`): FID, and KID or None."""

    fid: float
    kid: Any


def run_table(
    cells: Sequence[TableCell],
    score: Callable[[Sampler], CellScores],
    record: dict,
    save: Callable[[dict], None],
    *,
    progress: Callable[[str, bool], None] | None = None,
) -> dict:
    """Score each cell not already in `record` with the same settings; save after every cell.

    `progress(key, found)` is called once per cell, after it is scored (found False) or found
    done by an earlier run (found True). `record` is {"settings": {...}, "cells": {key: {...}}};
    a stored cell is reused only when the run-wide settings are equal and its sampler is the
    same. A cell records FID and KID (mean, std, subset size, subsets; None without reference
    features).
    """
    done = record.setdefault("cells", {})
    for cell in cells:
        key, sampler = cell.key, cell.sampler_record()
        old = done.get(key)
        if old is not None and old.get("sampler") == sampler:
            if progress is not None:
                progress(key, True)
            continue
        start = time.perf_counter()
        scores = score(cell.sampler)
        done[key] = {
            "row": cell.row, "steps": cell.sampler.steps, "fid": float(scores.fid),
            "kid": None if scores.kid is None else dict(scores.kid._asdict()),
            "seconds": time.perf_counter() - start, "sampler": sampler,
            "network_calls_per_image": cell.sampler.network_calls,
            "timesteps": list(cell.sampler.timesteps),
        }  # fmt: skip
        save(record)
        if progress is not None:
            progress(key, False)
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


def _rows_in_order(cells: dict) -> list[TableRow]:
    """The rows of the cells: η rows by η, then σ̂ and 2M."""
    keys = {c["row"] for c in cells.values()}
    etas = sorted((row_of(k) for k in keys if k not in OTHER_ROWS), key=lambda r: r.option)
    return etas + [row for key, row in OTHER_ROWS.items() if key in keys]


def table_markdown(record: dict, paper: dict | None = PAPER_TABLE1_CIFAR10) -> str:
    """Markdown table (rows η, σ̂, 2M; columns S): in each cell FID with the paper's number
    beside it, and KID × 10³ (mean ± std over subsets) where the reference keeps features."""
    cells = record["cells"]
    steps = sorted({c["steps"] for c in cells.values()})
    head = "| | " + " | ".join(f"S = {S}" for S in steps) + " |"
    lines = [head, "| --- |" + " ---: |" * len(steps)]
    for row in _rows_in_order(cells):
        entries = [_cell_text(cells.get(f"{row.key},S={S}"), _paper_value(paper, row.key, S))
                   for S in steps]  # fmt: skip
        lines.append(f"| {row.label} | " + " | ".join(entries) + " |")
    note = "FID ours (paper, CIFAR-10 Table 1 of Song, Meng & Ermon 2021, where it has the cell)"
    return f"{note}; {_kid_note(record)}\n\n" + "\n".join(lines) + "\n"


def _cell_text(cell: dict | None, paper: float | None) -> str:
    """'FID (paper) · KID mean ± std' of one cell (KID × 10³), '–' where it is not scored."""
    if cell is None:
        return "–"
    text = f"{cell['fid']:.2f}" + ("" if paper is None else f" ({paper:.2f})")
    kid = cell.get("kid")
    return text if kid is None else f"{text} · {kid['mean'] * 1e3:.2f} ± {kid['std'] * 1e3:.2f}"


def _kid_note(record: dict) -> str:
    """What the KID beside each FID is, or why there is none (with the rebuild command)."""
    kids = [c["kid"] for c in record["cells"].values() if c.get("kid")]
    if kids:
        return (f"after the dot, KID × 10³ (Bińkowski et al. 2018): mean ± std over "
                f"{kids[0]['n_subsets']} subsets of {kids[0]['subset_size']} features per set.")
    why = record.get("kid_unavailable")
    return f"KID unavailable: {why}." if why else "no KID."


def _paper_value(paper: dict | None, row: str, S: int) -> float | None:
    """The paper's FID for a row and S, or None."""
    if not paper or row not in paper or S not in PAPER_STEPS:
        return None
    return paper[row][PAPER_STEPS.index(S)]


def cell_fid(cell: dict) -> float:
    """A table.json cell's FID."""
    return float(cell["fid"])


def cell_kid(cell: dict) -> float | None:
    """A table.json cell's KID mean × 10³, or None where it has no KID."""
    kid = cell.get("kid")
    return None if kid is None else float(kid["mean"]) * 1e3


def table_series(
    record: dict, value: Callable[[dict], float | None] = cell_fid
) -> dict[str, list[tuple[float, float]]]:
    """(S, value) points per row of a table record, ordered by S, for `report.save_plot`: FID,
    or another score of the cells (`cell_kid`; cells without it are left out)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for row in _rows_in_order(record["cells"]):
        cells = [c for c in record["cells"].values() if c["row"] == row.key]
        points = sorted((float(c["steps"]), y) for c in cells if (y := value(c)) is not None)
        if points:
            series[row.plot_name] = points
    return series
