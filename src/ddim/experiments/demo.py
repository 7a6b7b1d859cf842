"""`ddim demo`: the whole flow on the CPU in minutes, ending in a report of the paper's claims.

shapes (uint8, `ddim.data.shapes`, no download) → `train` (the tiny config, 8 GroupNorm groups)
→ checkpoint → on its own model, what the DDIM paper shows:

- quality and time against S for DDIM (η = 0), η = 1 and DDPM with σ̂, S from 5 to 1000
  (Table 1's shape), and DPM-Solver++(2M) at the same S (beyond the paper), scored by pixel FD,
  precision/recall and the share of saturated images (`ddim.evaluation.pixel_metrics`), beside
  the paper's CIFAR-10 FIDs;
- consistency: the same x_T decoded at S = 10 … 1000 gives the same image (Fig. 5);
- interpolation between latents by slerp (Fig. 6, App. D.5);
- reconstruction error of encode → decode against S (Table 2's shape), beside the paper's row;
- the network calls and seconds behind every grid.

Everything lands in the output folder: report.html and report.md (the same content), results.json,
the PNGs, and run/ (the training run).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from ddim.checkpoint import load_model
from ddim.config import Config, apply_overrides, load_config
from ddim.data.shapes import shapes
from ddim.device import native_bf16
from ddim.errors import DdimError
from ddim.evaluation import pixel_metrics as pm
from ddim.evaluation.distances import statistics
from ddim.experiments.demo_report import SAMPLERS, SamplerRow, report_blocks
from ddim.experiments.paper import reconstruction_study
from ddim.experiments.report import write_report
from ddim.files import write_text
from ddim.images import grid
from ddim.network.precision import eps_model_for, sampling_precision
from ddim.progress import progress_bar
from ddim.sampling.runners import interpolate_latents, iterate_images
from ddim.sampling.seeds import seed_latents
from ddim.sampling.settings import Sampler, build_sampler
from ddim.training import train

HELD_OUT = 1_000_003  # held-out shapes: seed + HELD_OUT, a stream apart from training
SCALE = 4  # PNGs are written at 4× (nearest neighbour) so 16×16 images are visible
SIZE = 16


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of a demo run; the defaults take about ten minutes on two CPU cores."""

    steps: int = 3000  # training steps
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    ema_halflife_kimg: float = 20.0
    ema_rampup_ratio: float = 0.1
    loss_weighting: str = "x0_truncated"  # the tiny config's; "simple" is DDPM's eq. 14
    loss_gamma: float = 100.0
    train_images: int = 16384
    eval_images: int = 256  # per sampler and S < 1000, for the metrics and timing
    long_eval_images: int = 32  # per sampler at S = 1000
    sampler_steps: tuple[int, ...] = (5, 10, 20, 50, 100, 1000)
    sample_batch: int = 256
    grid_images: int = 64
    consistency_steps: tuple[int, ...] = (10, 20, 50, 100, 1000)
    consistency_seeds: int = 8
    detail_steps: int = 50  # S of the interpolation strips
    interpolation: int = 10  # images per interpolation strip
    strips: int = 3
    reconstruction_steps: tuple[int, ...] = (10, 20, 50, 100, 1000)
    reconstructions: int = 16


@dataclass
class Cell:
    """One (sampler, S) cell of the quality table."""

    sampler: str
    steps: int
    images: int
    network_calls: int
    seconds_per_image: float
    pixel_fd: float
    precision: float
    recall: float
    saturated: float
    grid: str
    pixel_fd_at_long_n: float | None = None  # the same sampler at S = 100 on the S = 1000 seeds


def demo_config(settings: DemoSettings, seed: int) -> Config:
    """The tiny config (16×16, ch 32, 8 groups) with the demo's recipe and seed."""
    return apply_overrides(
        load_config("tiny"),
        [
            f"training.batch_size={settings.batch_size}",
            f"training.n_iters={settings.steps}",
            f"training.lr={settings.lr}",
            f"training.warmup={min(settings.warmup, settings.steps)}",
            f"training.ema_halflife_kimg={settings.ema_halflife_kimg}",
            f"training.ema_rampup_ratio={settings.ema_rampup_ratio}",
            f"training.loss_weighting={settings.loss_weighting}",
            f"training.loss_gamma={settings.loss_gamma}",
            f"training.seed={seed}",
            "model.dropout=0.0",
            "data.dataset=shapes",
            f"data.image_size={SIZE}",
            f"sampling.steps={settings.detail_steps}",
        ],
    )


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
    """Train on shapes, evaluate the paper's claims, write out_dir/report.html (+ .md, .json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings or DemoSettings()
    if steps is not None:
        settings = DemoSettings(**{**asdict(settings), "steps": steps})
    device = torch.device(device)
    command = command or f"ddim demo -o {out} --steps {settings.steps} --seed {seed}"
    data = shapes(settings.train_images, seed=seed, size=SIZE)
    held_out = shapes(max(settings.eval_images, settings.reconstructions), seed=seed + HELD_OUT,
                      size=SIZE)  # fmt: skip
    _save(data[: settings.grid_images], out / "data.png")
    ckpt, training = _train(out, settings, seed, data, device, progress)
    net, config = load_model(ckpt, device=device)
    eps_model = eps_model_for(net, sampling_precision(device))
    betas = config.diffusion.betas()
    evaluation = _Evaluation(eps_model, betas, settings, device, held_out, out, progress)
    results = {
        "training": training,
        "data": evaluation.data_scores(data[: settings.eval_images]),
        "cells": [asdict(c) for c in evaluation.quality_table()],
        "consistency": evaluation.consistency(),
        "interpolation": evaluation.interpolation(),
        "reconstruction": evaluation.reconstruction(),
        "settings": asdict(settings),
        "command": command,
    }
    write_text(out / "results.json", json.dumps(results, indent=2))
    return write_report(out, report_blocks(results, out), "ddim demo")


def _train(out: Path, settings: DemoSettings, seed: int, data, device, progress):
    """Train afresh into out/run; return the checkpoint and a summary of the run."""
    shutil.rmtree(out / "run", ignore_errors=True)  # a previous demo's run: start afresh
    start = time.perf_counter()
    ckpt = train(
        demo_config(settings, seed), out / "run", images=data, device=device,
        checkpoint_every=settings.steps, sample_every=0, progress=progress, keep=1,
        log_every=max(1, settings.steps // 50),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text(
        encoding="utf-8").splitlines() if line.strip()]  # fmt: skip
    done = records[-1]["step"] if records else 0
    if done < settings.steps:  # SIGINT/SIGTERM: train saved a checkpoint and stopped
        raise DdimError(f"training stopped at step {done} of {settings.steps}")
    return ckpt, {
        "steps": done, "batch_size": settings.batch_size, "seconds": seconds,
        "images_per_s": done * settings.batch_size / seconds,
        "final_loss": records[-1]["loss"] if records else float("nan"),
        "bf16": native_bf16(torch.device(device)),  # what train() chose by default
    }  # fmt: skip


class _Evaluation:
    """The demo's measurements of one trained model; each method writes its PNGs."""

    def __init__(self, eps_model, betas, settings: DemoSettings, device, held_out, out, progress):
        self.eps_model, self.betas, self.settings = eps_model, betas, settings
        self.device, self.held_out, self.out, self.progress = device, held_out, out, progress
        reference = held_out[: settings.eval_images]
        self.reference = reference
        self.stats = statistics(pm.pixel_features(reference))
        self.stats_long = statistics(pm.pixel_features(reference[: settings.long_eval_images]))
        self.images: dict[tuple[str, int], torch.Tensor] = {}

    def _sampler(self, row: SamplerRow, S: int) -> Sampler:
        """The row's sampler over S uniform steps."""
        return build_sampler(self.betas, S, "uniform", row.sampler, **row.options)

    def _sample(self, sampler: Sampler, seeds: list[int]) -> tuple[torch.Tensor, float]:
        """uint8 images for `seeds` and the seconds they took."""
        start = time.perf_counter()
        batches = iterate_images(self.eps_model, sampler, seeds, (3, SIZE, SIZE),
                                 batch=self.settings.sample_batch, device=self.device)
        images = torch.cat([b.cpu() for b in batches])
        return images, time.perf_counter() - start

    def data_scores(self, data: torch.Tensor) -> dict:
        """The scores of training images themselves: the floor of every metric at this N."""
        precision, recall = pm.precision_recall(data, self.reference)
        extremes = pm.extreme_share(self.reference)
        return {"pixel_fd": pm.pixel_fd(data, self.stats), "precision": precision,
                "recall": recall, "saturated": pm.saturated_fraction(data),
                "max_extreme_share": float(extremes.max())}  # fmt: skip

    def quality_table(self) -> list[Cell]:
        """Every (sampler, S) cell: metrics, time, calls, grid (Table 1's shape)."""
        planned = [(row, S) for row in SAMPLERS for S in row.steps(self.settings.sampler_steps)]
        cells = []
        with progress_bar(total=len(planned), unit="cell", desc="samplers",
                          disable=not self.progress) as bar:  # fmt: skip
            for row, S in planned:
                cells.append(self._cell(row, S))
                bar.set_postfix_str(f"{row.tag} S={S}")
                bar.update(1)
        return cells

    def _cell(self, row: SamplerRow, S: int) -> Cell:
        """Sample, time and score one cell; S = 1000 uses fewer images (it is 10× slower)."""
        s = self.settings
        long = S >= 1000
        n = s.long_eval_images if long else s.eval_images
        sampler = self._sampler(row, S)
        images, seconds = self._sample(sampler, list(range(n)))
        self.images[(row.tag, S)] = images
        name = f"samples-{row.tag}-S{S:04d}.png"
        _save(images[: s.grid_images], self.out / name)
        reference = self.reference[:n]
        precision, recall = pm.precision_recall(images, reference)
        cell = Cell(row.label, S, n, sampler.network_calls,
                    seconds / n, pm.pixel_fd(images, self.stats_long if long else self.stats),
                    precision, recall, pm.saturated_fraction(images), name)  # fmt: skip
        shorter = self.images.get((row.tag, 100))
        if long and shorter is not None:  # the same seeds at S = 100, scored at the same N
            cell.pixel_fd_at_long_n = pm.pixel_fd(shorter[:n], self.stats_long)
        return cell

    def consistency(self) -> dict:
        """The same x_T decoded by DDIM (η = 0) at each S: a grid and the distance to S = 1000."""
        s = self.settings
        n = min(s.consistency_seeds, s.long_eval_images)
        rows, seconds = [], {}
        for S in s.consistency_steps:
            images = self.images.get(("ddim", S))
            if images is None:
                images, spent = self._sample(self._sampler(SAMPLERS[0], S), list(range(n)))
                seconds[S] = spent
            rows.append(images[:n])
        _save(torch.cat(rows), self.out / "consistency.png", nrow=n)
        final = rows[-1].float()
        distance = [float((r.float() - final).abs().mean()) for r in rows]
        return {"seeds": n, "steps": list(s.consistency_steps), "grid": "consistency.png",
                "mean_abs_difference_to_last": distance}  # fmt: skip

    def interpolation(self) -> dict:
        """Rows of DDIM (η = 0) decodes along slerp(x_T(seed 2i), x_T(seed 2i+1), α)."""
        s = self.settings
        sampler = self._sampler(SAMPLERS[0], s.detail_steps)
        x_T = seed_latents(range(2 * s.strips), (3, SIZE, SIZE), self.device)
        start, rows = time.perf_counter(), []
        for i in range(s.strips):
            strip = interpolate_latents(self.eps_model, sampler, x_T[2 * i], x_T[2 * i + 1],
                                        s.interpolation)  # fmt: skip
            rows.append(strip.cpu())
        _save(torch.cat(rows), self.out / "interpolation.png", nrow=s.interpolation)
        return {"grid": "interpolation.png", "images": s.strips * s.interpolation,
                "network_calls": sampler.network_calls * s.strips * s.interpolation,
                "seconds": time.perf_counter() - start}  # fmt: skip

    def reconstruction(self) -> dict:
        """Encode → decode held-out shapes at each S (Table 2's shape); MSE on [0, 1]."""
        s = self.settings
        originals = self.held_out[: s.reconstructions]
        samplers = [self._sampler(SAMPLERS[0], S) for S in s.reconstruction_steps]
        rows, recs = reconstruction_study(self.eps_model, originals, samplers,
                                          batch=s.sample_batch, device=self.device)
        shown = min(10, len(originals))
        _save(torch.cat([originals[:shown], *(r[:shown] for r in recs)]),
              self.out / "reconstruction.png", nrow=shown)  # fmt: skip
        return {"images": len(originals), "rows": rows, "grid": "reconstruction.png"}


def _save(images: torch.Tensor, path: Path, nrow: int | None = None) -> Path:
    """A uint8 image grid as a PNG enlarged SCALE× with nearest-neighbour pixels."""
    picture = Image.fromarray(grid(images.cpu(), nrow))
    picture = picture.resize((picture.width * SCALE, picture.height * SCALE), Image.NEAREST)
    picture.save(path)
    return path
