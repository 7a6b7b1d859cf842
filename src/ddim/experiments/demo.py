"""`ddim demo`: the whole flow on the CPU in minutes, ending in a one-page report.

shapes (uint8, `ddim.data.shapes`, no download) → `train` (the tiny config) → checkpoint → DDIM
(η = 0) and DDPM (σ̂, the large variance) at several S → sample grids, a pixel-FD and time table
and plot, an interpolation strip (slerp of x_T, DDIM App. D.5) and a reconstruction row
(encode → decode, DDIM Sec. 5.4) → `report.html` and `report.md` in the output folder.

"Pixel FD" is the Fréchet distance of Gaussians fitted to 8×8-downsampled pixels in [0, 1] of the
generated images and of held-out shapes: a cheap stand-in for FID (no Inception network), on its
own scale, comparable only within one report.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ddim.checkpoint import load_model
from ddim.config import Config, apply_overrides, load_config
from ddim.data import to_model_range, to_uint8
from ddim.data.shapes import shapes
from ddim.diffusion.samplers import generators_from_seeds, randn, reconstruct, sample, slerp_path
from ddim.errors import DdimError
from ddim.experiments.report import Panel, save_plot, write_report
from ddim.fid import frechet_distance, statistics
from ddim.files import write_text
from ddim.generate import SamplerSpec, sample_batch
from ddim.images import grid
from ddim.network.precision import eps_model_for
from ddim.training import train

HELD_OUT = 1_000_003  # held-out shapes: seed + HELD_OUT, a stream apart from training
SCALE = 4  # PNGs are written at 4× (nearest neighbour) so 16×16 images are visible


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of a demo run; the defaults take a few minutes on two CPU cores."""

    steps: int = 1200  # training steps
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 50
    ema_halflife_kimg: float = 2.0
    train_images: int = 8192
    eval_images: int = 256  # per sampler and S, for pixel FD and timing
    sampler_steps: tuple[int, ...] = (5, 10, 20, 50)
    sample_batch: int = 128
    grid_images: int = 64
    detail_steps: int = 50  # S of the interpolation and reconstruction
    interpolation: int = 10  # images per interpolation strip
    strips: int = 3
    reconstructions: int = 10


@dataclass
class SamplerResult:
    """One row of the quality/time table."""

    sampler: str
    steps: int
    pixel_fd: float
    seconds_per_image: float
    grid: str


def demo_config(settings: DemoSettings, seed: int) -> Config:
    """The tiny config (16×16, ch 32) with the demo's batch, learning rate, EMA and seed."""
    return apply_overrides(
        load_config("tiny"),
        [
            f"training.batch_size={settings.batch_size}",
            f"training.n_iters={settings.steps}",
            f"training.lr={settings.lr}",
            f"training.warmup={min(settings.warmup, settings.steps)}",
            f"training.ema_halflife_kimg={settings.ema_halflife_kimg}",
            f"training.seed={seed}",
            "model.dropout=0.0",
            "data.dataset=shapes",
            f"sampling.steps={settings.detail_steps}",
        ],
    )


def pixel_features(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, 3, H, W) → (N, 3·(H/2)·(W/2)) float64: 2×2 average-pooled pixels in [0, 1]."""
    x = F.avg_pool2d(images.float() / 255, 2)
    return x.flatten(1).double().cpu().numpy()


def pixel_fd(images: torch.Tensor, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance between Gaussians fitted to the pixel features of two image sets."""
    mu, sigma = statistics(pixel_features(images))
    return frechet_distance(mu, sigma, *reference)


def run_demo(
    out_dir: str | Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    settings: DemoSettings | None = None,
    command: str | None = None,
) -> Path:
    """Train on shapes, sample at several S, write out_dir/report.html (+ .md); return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings or DemoSettings()
    if steps is not None:
        settings = DemoSettings(**{**asdict(settings), "steps": steps})
    device = torch.device(device)
    command = command or f"ddim demo -o {out} --steps {settings.steps} --seed {seed}"
    config = demo_config(settings, seed)
    shutil.rmtree(out / "run", ignore_errors=True)  # a previous demo's run: start afresh

    data = shapes(settings.train_images, seed=seed)
    held_out = shapes(settings.eval_images, seed=seed + HELD_OUT)
    _save(data[: settings.grid_images], out / "data.png")
    start = time.perf_counter()
    ckpt = train(
        config,
        out / "run",
        images=data,
        device=device,
        checkpoint_every=settings.steps,
        sample_every=0,
        log_every=max(1, settings.steps // 50),
        progress=progress,
        keep=1,
    )
    training = _training_summary(out / "run", time.perf_counter() - start, settings)
    if training["steps"] < settings.steps:  # SIGINT/SIGTERM: train saved a checkpoint and stopped
        raise DdimError(f"training stopped at step {training['steps']} of {settings.steps}")

    net, config = load_model(ckpt, device=device)
    eps_model = eps_model_for(net)
    reference = statistics(pixel_features(held_out))
    floor = pixel_fd(data[: settings.eval_images], reference)
    betas = config.diffusion.betas()
    results = _evaluate(eps_model, betas, reference, out, settings, device, progress)
    _plot(results, out / "quality_time.png")
    _interpolation_strips(eps_model, betas, out, settings, device)
    recon_rmse = _reconstruction_row(eps_model, betas, held_out, out, settings, device)
    blocks = _report_blocks(command, settings, training, results, floor, recon_rmse)
    summary = {
        "training": training,
        "pixel_fd_data": floor,
        "reconstruction_rmse": recon_rmse,
        "samplers": [asdict(r) for r in results],
        "settings": asdict(settings),
    }
    return _write_report(out, blocks, summary)


def _write_report(out: Path, blocks: list[tuple], summary: dict) -> Path:
    """report.md, report.html (the same blocks) and results.json; returns the HTML's path."""
    write_text(out / "results.json", json.dumps(summary, indent=2))
    return write_report(out, blocks, "ddim demo")


# --- stages ------------------------------------------------------------------------------------


def _save(images: torch.Tensor, path: Path, nrow: int | None = None) -> Path:
    """A uint8 image grid as a PNG enlarged SCALE× with nearest-neighbour pixels."""
    picture = Image.fromarray(grid(images.cpu(), nrow))
    picture.resize((picture.width * SCALE, picture.height * SCALE), Image.NEAREST).save(path)
    return path


def _training_summary(run_dir: Path, seconds: float, settings: DemoSettings) -> dict:
    """Steps, wall time, mean images/s and final loss from the run's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return {
        "steps": records[-1]["step"] if records else 0,
        "batch_size": settings.batch_size,
        "seconds": seconds,
        "images_per_s": (records[-1]["step"] if records else 0) * settings.batch_size / seconds,
        "final_loss": records[-1]["loss"] if records else float("nan"),
    }


def _specs(settings: DemoSettings) -> list[tuple[str, SamplerSpec]]:
    """(label, spec): DDIM η = 0 and DDPM with σ̂ (large variance) at each S."""
    specs = []
    for s in settings.sampler_steps:
        specs.append(("DDIM η=0", SamplerSpec(steps=s, eta=0.0, kind="ddim")))
        specs.append(("DDPM σ̂", SamplerSpec(steps=s, kind="ddpm", variance="large")))
    return specs


@torch.no_grad()
def _evaluate(eps_model, betas, reference, out, settings, device, progress) -> list[SamplerResult]:
    """Sample `eval_images` per (sampler, S) from seeds 0.. ; time them, score them, save grids."""
    shape = (3, 16, 16)
    seeds = list(range(settings.eval_images))
    specs = _specs(settings)
    bar = tqdm(total=len(specs) * len(seeds), unit="img", disable=not progress, desc="sampling")
    results = []
    for label, spec in specs:
        start, chunks = time.perf_counter(), []
        for first in range(0, len(seeds), settings.sample_batch):
            batch_seeds = seeds[first : first + settings.sample_batch]
            x = sample_batch(eps_model, betas, spec, batch_seeds, shape, device)
            chunks.append(to_uint8(x).cpu())
            bar.update(len(batch_seeds))
        seconds = time.perf_counter() - start
        images = torch.cat(chunks)
        name = f"samples-{spec.kind}-S{spec.steps:03d}.png"
        _save(images[: settings.grid_images], out / name)
        fd = pixel_fd(images, reference)
        results.append(SamplerResult(label, spec.steps, fd, seconds / len(seeds), name))
        bar.set_postfix(sampler=f"{spec.kind} S={spec.steps}", pixel_fd=f"{fd:.2f}")
    bar.close()
    return results


@torch.no_grad()
def _interpolation_strips(eps_model, betas, out, settings, device) -> None:
    """Rows of DDIM (η = 0) decodes of slerp(x_T(seed 2i), x_T(seed 2i+1), α), α from 0 to 1."""
    n, rows = settings.interpolation, []
    generators = generators_from_seeds(range(2 * settings.strips), device)
    x_T = randn((2 * settings.strips, 3, 16, 16), generators, device=device)
    for i in range(settings.strips):
        z = slerp_path(x_T[2 * i], x_T[2 * i + 1], n)
        rows.append(to_uint8(sample(eps_model, z, betas, steps=settings.detail_steps, eta=0.0)))
    _save(torch.cat(rows), out / "interpolation.png", nrow=n)


@torch.no_grad()
def _reconstruction_row(eps_model, betas, held_out, out, settings, device) -> float:
    """Held-out originals (top) and their DDIM encode → decode at S (bottom); returns RMSE."""
    originals = held_out[: settings.reconstructions].to(device)
    x = reconstruct(eps_model, to_model_range(originals), betas, steps=settings.detail_steps)
    rebuilt = to_uint8(x)
    _save(torch.cat([originals, rebuilt]), out / "reconstruction.png", nrow=len(originals))
    diff = to_model_range(rebuilt) - to_model_range(originals)
    return float(diff.pow(2).mean().sqrt())


# --- the plot --------------------------------------------------------------------------------

COLOURS = {"DDIM η=0": (31, 119, 180), "DDPM σ̂": (214, 39, 40)}
LEGEND = {"DDIM η=0": "DDIM, eta = 0", "DDPM σ̂": "DDPM, large variance"}  # ASCII: any font


def _plot(results: list[SamplerResult], path: Path) -> Path:
    """Two panels side by side: pixel FD against S and seconds per image against S (log S)."""
    panels = []
    for field, title in (("pixel_fd", "pixel FD (lower is better)"),
                         ("seconds_per_image", "seconds per image")):
        series = {LEGEND[label]: [(r.steps, getattr(r, field)) for r in results
                                  if r.sampler == label] for label in COLOURS}
        colors = {LEGEND[label]: colour for label, colour in COLOURS.items()}
        panels.append(Panel(series, title=title, xlabel="S (network calls)", colors=colors))
    return save_plot(panels, path)


# --- the report: one list of blocks, rendered as Markdown and as HTML -------------------------


def _report_blocks(command, settings, training, results, floor, recon_rmse) -> list[tuple]:
    """The report's content as ("h1"|"h2"|"p"|"img"|"table", …) blocks."""
    t = training
    table = [
        [
            r.sampler,
            str(r.steps),
            f"{r.pixel_fd:.3f}",
            f"{r.seconds_per_image * 1000:.1f}",
            f"[grid]({r.grid})",
        ]
        for r in results
    ]
    s_list = ", ".join(map(str, settings.sampler_steps))
    return [
        ("h1", "ddim demo"),
        ("p", f"Command: `{command}`"),
        ("h2", "Data"),
        (
            "p",
            f"{settings.train_images} procedurally generated 16×16 shapes (`ddim.data.shapes`; "
            "our own generator, so no download and no licence terms). "
            f"The first {settings.grid_images}:",
        ),
        ("img", "data.png", "training images"),
        ("h2", "Training"),
        (
            "table",
            ["steps", "batch", "seconds", "images/s", "final loss"],
            [
                [
                    str(t["steps"]),
                    str(t["batch_size"]),
                    f"{t['seconds']:.1f}",
                    f"{t['images_per_s']:.0f}",
                    f"{t['final_loss']:.4f}",
                ]
            ],
        ),
        (
            "p",
            f"Tiny config (ch 32, ch_mult [1, 2], attention at 8×8), Adam lr {settings.lr}, "
            f"warm-up {min(settings.warmup, settings.steps)} steps, "
            f"EMA half-life {settings.ema_halflife_kimg} kimg; "
            "samples below use the EMA weights. Run folder: `run/`.",
        ),
        ("h2", "Quality and time against S"),
        (
            "p",
            f"DDIM (η = 0, eq. 12) and DDPM ancestral sampling with the large variance σ̂ "
            f"(x_0 clipped) on uniform sub-sequences of S ∈ {{{s_list}}} of T = 1000 steps "
            f"(S = T is too slow for a CPU demo); {settings.eval_images} images each, seeds "
            f"0–{settings.eval_images - 1}. **Pixel FD** (not FID): Fréchet distance of "
            "Gaussians fitted to 8×8-average-pooled pixels in [0, 1] against "
            f"{settings.eval_images} held-out shapes; training images against the same "
            f"held-out set score {floor:.3f} (the floor at this sample size).",
        ),
        ("table", ["sampler", "S", "pixel FD", "ms / image", "samples"], table),
        ("img", "quality_time.png", "pixel FD and seconds per image against S"),
        *[
            block
            for r in results
            if r.steps == max(settings.sampler_steps)
            for block in (("p", f"{r.sampler}, S = {r.steps}:"), ("img", r.grid, r.sampler))
        ],
        ("h2", "Interpolation"),
        (
            "p",
            f"Each row: DDIM (η = 0, S = {settings.detail_steps}) decodes of slerp between "
            "the x_T of two seeds (DDIM App. D.5).",
        ),
        ("img", "interpolation.png", "interpolation strips"),
        ("h2", "Reconstruction"),
        (
            "p",
            f"Top: held-out shapes. Bottom: DDIM encode → decode at S = "
            f"{settings.detail_steps} (eqs. 13/14, then eq. 12); RMSE {recon_rmse:.4f} in "
            "[−1, 1] units.",
        ),
        ("img", "reconstruction.png", "originals and reconstructions"),
    ]
