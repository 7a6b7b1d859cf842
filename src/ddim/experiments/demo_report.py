"""The demo's report: which samplers it compares, and its measurements turned into tables, plots,
pictures and sentences beside the paper's numbers (rendered by `ddim.experiments.report`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddim.evaluation.pixel_metrics import SATURATION
from ddim.experiments.paper import PAPER_STEPS, PAPER_TABLE1_CIFAR10, PAPER_TABLE2_CIFAR10
from ddim.experiments.report import Panel, save_plot


@dataclass(frozen=True)
class SamplerRow:
    """A row of the quality table: a label, a file-name tag, the sampler (a name of
    `ddim.sampling.SAMPLERS` and its option, None for a sampler without one; S is set per cell),
    the paper's Table 1 row (None: a sampler the paper does not have), and what it does."""

    label: str
    tag: str
    sampler: str
    option: tuple[str, Any] | None
    paper_row: str | None
    note: str
    full_chain: bool = True  # whether it also samples S = T (every step of the chain)

    @property
    def options(self) -> dict[str, Any]:
        """The sampler's option as keyword arguments of `build_sampler`."""
        return dict([self.option] if self.option else [])

    def steps(self, steps: Sequence[int]) -> list[int]:
        """The S values of `steps` this row samples."""
        return [S for S in steps if self.full_chain or S < FULL_CHAIN]


FULL_CHAIN = 1000  # S = T: the sampler walks every step of the chain
SECOND_ORDER = SamplerRow(
    "DPM-Solver++(2M)", "dpmpp2m", "dpmpp-2m", None, None,
    "the second-order multistep solver of the same ODE as DDIM (Lu et al. 2022), on the same "
    "timesteps with one network call each; x0 not clipped; not run at S = 1000, the whole "
    "chain, which would add a quarter to the demo's sampling time",
    full_chain=False,
)  # fmt: skip
SAMPLERS = (
    SamplerRow("DDIM, η = 0", "ddim", "ddim", ("eta", 0.0), "eta=0.0",
               "eq. 12 with σ = 0, deterministic; x0 not clipped"),
    SamplerRow("DDIM, η = 1", "eta1", "ddim", ("eta", 1.0), "eta=1.0",
               "eq. 12 with σ(η = 1) of eq. 16, DDPM's posterior variance; x0 not clipped"),
    SamplerRow("DDPM, σ̂", "ddpm", "ddpm", ("variance", "large"), "sigma_hat",
               "ancestral sampling with variance β (the paper's σ̂); x0 clipped to [−1, 1]"),
    SECOND_ORDER,
)  # fmt: skip
PAPER_ROWS = tuple(row for row in SAMPLERS if row.paper_row)  # the rows the paper's claims name


def _cell(cells: list[dict], label: str, S: int) -> dict | None:
    return next((c for c in cells if c["sampler"] == label and c["steps"] == S), None)


def _plot(cells: list[dict], path: Path) -> Path:
    """Three panels against S, one line per sampler: pixel FD and precision over the cells that
    share the full image count (S = 1000 uses fewer images, and pixel FD grows as N shrinks), and
    seconds per image over every S."""
    panels = []
    for key, title, every_s in (("pixel_fd", "pixel FD (lower is better)", False),
                                ("precision", "precision (higher is better)", False),
                                ("seconds_per_image", "seconds per image", True)):  # fmt: skip
        series = {}
        for sampler in SAMPLERS:
            name = sampler.label.replace("η", "eta").replace("σ̂", "sigma-hat")  # PIL's font
            series[name] = [(c["steps"], c[key]) for c in cells if c["sampler"] == sampler.label
                            and (every_s or c["steps"] < 1000)]  # fmt: skip
        panels.append(Panel(series, title=title, xlabel="S (log scale)"))
    return save_plot(panels, path)


def _metric_table(results: dict, key: str, fmt: str, paper: bool) -> tuple:
    """Rows = samplers, columns = S; the paper's CIFAR-10 FID in brackets where it has the cell."""
    cells, steps = results["cells"], sorted({c["steps"] for c in results["cells"]})
    rows = []
    for sampler in SAMPLERS:
        row = [sampler.label]
        for S in steps:
            cell = _cell(cells, sampler.label, S)
            text = "–" if cell is None else format(cell[key], fmt)
            if paper and sampler.paper_row and S in PAPER_STEPS:
                text += f" ({PAPER_TABLE1_CIFAR10[sampler.paper_row][PAPER_STEPS.index(S)]:g})"
            row.append(text)
        rows.append(row)
    header = ["sampler"] + [f"S = {S}" + (" †" if S >= 1000 else "") for S in steps]
    return ("table", header, rows)


def _claims(cells: list[dict]) -> list[str]:
    """The paper's Table 1 claims, checked on this model's pixel FD, and 2M against DDIM; each
    sentence says yes/no."""
    ddim, others = SAMPLERS[0].label, [s.label for s in PAPER_ROWS[1:]]
    lines = []
    for S in (10, 20):
        mine = _cell(cells, ddim, S)
        rivals = [_cell(cells, label, S) for label in others]
        if mine and all(rivals):
            beaten = all(mine["pixel_fd"] < r["pixel_fd"] for r in rivals)
            lines.append(f"At S = {S}, DDIM (η = 0) {'beats' if beaten else 'does not beat'} "
                         f"η = 1 and σ̂ on pixel FD ({mine['pixel_fd']:.3f} against "
                         + ", ".join(f"{r['pixel_fd']:.3f}" for r in rivals) + ").")
    fds = [(c["steps"], c["pixel_fd"]) for c in cells if c["sampler"] == ddim and c["steps"] < 1000]
    fds.sort()
    worse = [(a, b) for (a, fa), (b, fb) in zip(fds, fds[1:]) if fb > fa * 1.1 + 0.01]
    lines.append("DDIM's pixel FD " + ("improves or holds (within 10 %) as S grows from "
                 f"{fds[0][0]} to {fds[-1][0]}." if not worse else
                 "gets worse between S = " + ", ".join(f"{a} and {b}" for a, b in worse) + "."))
    return lines + _second_order(cells)


def _second_order(cells: list[dict]) -> list[str]:
    """DPM-Solver++(2M) against DDIM (η = 0) at the smallest S both have, at equal network calls."""
    two, ddim = SECOND_ORDER.label, SAMPLERS[0].label
    shared = sorted({c["steps"] for c in cells if c["sampler"] == two}
                    & {c["steps"] for c in cells if c["sampler"] == ddim})  # fmt: skip
    if not shared:
        return []
    mine, theirs = _cell(cells, two, shared[0]), _cell(cells, ddim, shared[0])
    beaten = mine["pixel_fd"] < theirs["pixel_fd"]
    return [f"At S = {shared[0]}, DPM-Solver++(2M) {'beats' if beaten else 'does not beat'} DDIM "
            f"(η = 0) on pixel FD ({mine['pixel_fd']:.3f} against {theirs['pixel_fd']:.3f}) with "
            f"the same {mine['network_calls']} network calls per image."]


def report_blocks(results: dict, out: Path) -> list[tuple]:
    """The whole report as blocks; draws the quality plot into `out`."""
    _plot(results["cells"], out / "quality_time.png")
    return [
        ("h1", "ddim demo"),
        ("p", f"Command: `{results['command']}`."),
        *_data_and_training(results),
        *_quality(results),
        *_consistency(results),
        *_interpolation(results),
        *_reconstruction(results),
    ]


def _data_and_training(results: dict) -> list[tuple]:
    s, t = results["settings"], results["training"]
    return [
        ("h2", "Data"),
        ("p", f"{s['train_images']} procedurally generated 16×16 shapes (`ddim.data.shapes`: "
              "a disc, square, triangle or bar of random size, place and colour on a dark plain "
              "or two-tone background; our own generator, so no download and no licence). "
              f"The first {s['grid_images']}:"),
        ("img", "data.png", "training images"),
        ("h2", "Training"),
        ("table", ["steps", "batch", "seconds", "images/s", "final loss", "bf16 autocast"],
         [[str(t["steps"]), str(t["batch_size"]), f"{t['seconds']:.1f}",
           f"{t['images_per_s']:.0f}", f"{t['final_loss']:.4f}", "yes" if t["bf16"] else "no"]]),
        ("p", f"The `tiny` config: ch 32, ch_mult [1, 2], one residual block per level, attention "
              "at 8×8, 8 GroupNorm groups (4 channels each; with 32 groups of one channel the "
              "network cannot predict the per-image mean of ε, see docs/training.md). Adam "
              f"lr {s['lr']}, warm-up {s['warmup']} steps, EMA half-life "
              f"{s['ema_halflife_kimg']} kimg ramped up as {s['ema_rampup_ratio']} × the images "
              f"seen; each t's ε error weighted by `{s['loss_weighting']}` (γ = "
              f"{s['loss_gamma']:g}: min(max(σ_t², 1), γ), the x_0 error a deterministic sampler "
              "inherits from that step; with DDPM's plain loss the same run gives saturated "
              "DDIM samples, docs/training.md). Every sample below is from the EMA weights. Run "
              "folder: `run/`."),
    ]  # fmt: skip


def _quality(results: dict) -> list[tuple]:
    s, data, cells = results["settings"], results["data"], results["cells"]
    long = [c for c in cells if c["steps"] >= 1000 and c["pixel_fd_at_long_n"] is not None]
    long_note = "; ".join(f"{c['sampler']}: {c['pixel_fd']:.3f} at S = 1000, "
                          f"{c['pixel_fd_at_long_n']:.3f} at S = 100" for c in long)
    samplers = "; ".join(f"**{x.label}**: {x.note}" for x in SAMPLERS)
    at20 = [(x, _cell(cells, x.label, 20)) for x in SAMPLERS]
    return [
        ("h2", "Quality and time against S (the shape of the paper's Table 1)"),
        ("p", f"Samplers: {samplers}. Each walks a uniform sub-sequence of S of the T = 1000 "
              f"steps. Seeds 0–{s['eval_images'] - 1} (image k from seed k, the same x_T in "
              f"every cell); † S = 1000 uses the first {s['long_eval_images']} seeds only."),
        ("p", "**Pixel FD** (not FID): the Fréchet distance between Gaussians fitted to "
              "2×2-average-pooled pixels in [0, 1] of the samples and of held-out shapes. Like "
              "FID it sees only means and covariances: a few wild images dominate it, and it "
              "cannot tell a disc from a square of the same colours. Training images score "
              f"{data['pixel_fd']:.3f} against the same held-out set (its floor at this N). The "
              "paper's CIFAR-10 FIDs are in brackets: another data set and another metric, so "
              "only the trend across S and rows compares."),
        _metric_table(results, "pixel_fd", ".3f", paper=True),
        ("p", "**Share of saturated samples**: images with over "
              f"{SATURATION:.0%} of their values at 0 or 255 (no held-out shape has more than "
              f"{data['max_extreme_share']:.1%}). **Precision / recall** (Kynkäänniemi et al. "
              "2019, k = 3, pooled pixels): the share of samples inside the held-out shapes' "
              "nearest-neighbour balls, and of held-out shapes inside the samples'; an outlier "
              f"costs precision only its share. Training images: precision {data['precision']:.2f},"
              f" recall {data['recall']:.2f}."),
        _metric_table(results, "saturated", ".1%", paper=False),
        ("table", ["sampler", "S", "precision", "recall", "network calls / image",
                   "ms / image", "grid"],
         [[c["sampler"], str(c["steps"]), f"{c['precision']:.2f}", f"{c['recall']:.2f}",
           str(c["network_calls"]), f"{c['seconds_per_image'] * 1000:.1f}",
           f"[{c['grid']}]({c['grid']})"] for c in cells]),
        *([("p", "At the same 32 seeds, pixel FD at S = 1000 against S = 100: " + long_note
            + ".")] if long else []),
        ("img", "quality_time.png", "pixel FD, precision and seconds per image against S"),
        ("p", " ".join(_claims(cells))),
        *[block for x, cell in at20 if cell for block in
          (("p", f"{x.label}, S = 20 ({cell['network_calls']} network calls per image):"),
           ("img", cell["grid"], f"{x.label}, S = 20"))],
    ]  # fmt: skip


def _consistency(results: dict) -> list[tuple]:
    c = results["consistency"]
    distances = c["mean_abs_difference_to_last"]
    last = c["steps"][-1]
    return [
        ("h2", "Consistency: one x_T, several S (Fig. 5)"),
        ("p", f"Each row decodes the same {c['seeds']} latents x_T (seeds 0–{c['seeds'] - 1}) "
              f"with DDIM (η = 0), top to bottom S = {', '.join(map(str, c['steps']))}. The "
              "paper's claim: the image is set by x_T, and S changes only its detail."),
        ("img", c["grid"], "the same latents decoded at several S"),
        ("table", ["S"] + [str(S) for S in c["steps"]],
         [[f"mean |Δ| to S = {last} (uint8 levels)"] + [f"{d:.2f}" for d in distances]]),
    ]  # fmt: skip


def _interpolation(results: dict) -> list[tuple]:
    i, s = results["interpolation"], results["settings"]
    return [
        ("h2", "Interpolation (Fig. 6)"),
        ("p", f"Each row: DDIM (η = 0, S = {s['detail_steps']}) decodes of slerp between the x_T "
              f"of two seeds, {s['interpolation']} steps of α from 0 to 1 (App. D.5). "
              f"{i['images']} images, {i['network_calls']} network calls, {i['seconds']:.1f} s."),
        ("img", i["grid"], "interpolation strips"),
    ]  # fmt: skip


def _reconstruction(results: dict) -> list[tuple]:
    r = results["reconstruction"]
    rows = []
    for row in r["rows"]:
        paper = PAPER_TABLE2_CIFAR10.get(row["steps"])
        rows.append([str(row["steps"]), f"{row['mse']:.2e}", f"{row['mse']:.4f}",
                     "–" if paper is None else f"{paper:g}", str(row["network_calls"]),
                     f"{row['seconds']:.1f}"])  # fmt: skip
    return [
        ("h2", "Reconstruction (the shape of the paper's Table 2)"),
        ("p", f"{r['images']} held-out shapes encoded to x_T by the ODE run upward (eqs. 13/14) "
              "and decoded with DDIM (η = 0), S steps each way. Error: per-dimension MSE on "
              "[0, 1] of the float outputs; the paper's CIFAR-10 row beside it."),
        ("table", ["S", "MSE", "MSE (to 1e-4)", "paper (CIFAR-10)", "network calls / image",
                   "seconds"], rows),
        ("p", "Top row: originals; then one row per S, in the table's order."),
        ("img", r["grid"], "originals and reconstructions"),
    ]  # fmt: skip
