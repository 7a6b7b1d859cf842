"""`ddim.data.shapes`, `ddim.experiments.demo` and `ddim demo`: the generator, pixel FD, report."""

import os
import re
import subprocess
import sys
import time

import numpy as np
import torch

from ddim.cli import main
from ddim.data.shapes import shapes
from ddim.experiments.demo import pixel_fd, pixel_features, run_demo
from ddim.fid import statistics


def test_shapes_are_uint8_of_the_documented_shape():
    images = shapes(12, seed=3)
    assert images.dtype == torch.uint8
    assert images.shape == (12, 3, 16, 16)
    assert shapes(0).shape == (0, 3, 16, 16)
    assert shapes(2, size=8).shape == (2, 3, 8, 8)


def test_shapes_are_deterministic_per_seed_and_index():
    assert torch.equal(shapes(10, seed=5), shapes(10, seed=5))
    assert torch.equal(shapes(4, seed=5), shapes(10, seed=5)[:4])  # image k depends on (seed, k)
    assert not torch.equal(shapes(4, seed=5), shapes(4, seed=6))
    assert len({bytes(image.numpy()) for image in shapes(50)}) == 50


def test_every_image_has_a_shape_brighter_than_any_background():
    # backgrounds are at most 0.4 · 255 per channel; shape colours have value >= 0.75
    brightest = shapes(200, seed=1).amax(dim=(1, 2, 3))
    assert (brightest > 0.4 * 255 + 10).all()


def test_pixel_features_are_2x2_pooled_pixels_in_unit_range():
    images = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    images[0, :, :2, :2] = 255
    images[0, :, 2:, 2:] = torch.tensor([0, 255, 0, 255], dtype=torch.uint8).view(2, 2)
    features = pixel_features(images).reshape(3, 2, 2)
    assert np.allclose(features[:, 0, 0], 1.0)
    assert np.allclose(features[:, 1, 1], 0.5)
    assert np.allclose(features[:, 0, 1], 0.0)


def test_pixel_fd_of_a_shifted_set_is_the_squared_mean_shift():
    # same covariance, every feature shifted by δ: FD = D · δ² (D = 3 · 8 · 8 features)
    images = torch.randint(0, 200, (300, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    reference = statistics(pixel_features(images))
    assert abs(pixel_fd(images, reference)) < 1e-8
    shifted = pixel_fd(images + 40, reference)
    assert np.isclose(shifted, 192 * (40 / 255) ** 2, rtol=1e-6)


def test_run_demo_end_to_end_writes_a_report_with_existing_images(tmp_path, small_demo):
    start = time.perf_counter()
    report = run_demo(tmp_path / "demo", settings=small_demo, progress=False)
    assert time.perf_counter() - start < 60
    assert report == tmp_path / "demo" / "report.html"
    html = report.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert {"data.png", "quality_time.png", "interpolation.png", "reconstruction.png"} <= set(
        sources
    )
    assert all((report.parent / s).is_file() and s.endswith(".png") for s in sources)
    markdown = (report.parent / "report.md").read_text(encoding="utf-8")
    assert set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)) == set(sources)
    for s in small_demo.sampler_steps:  # one table row per sampler and S
        assert f"| DDIM η=0 | {s} |" in markdown and f"| DDPM σ̂ | {s} |" in markdown
    assert "pixel FD" in markdown and "FID" not in markdown.replace("(not FID)", "")


def test_cli_help_shows_an_example():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "ddim", "demo", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0
    assert "example:" in result.stdout and "ddim demo -o" in result.stdout


def test_cli_rejects_nonpositive_steps(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "d"), "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
