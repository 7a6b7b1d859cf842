"""`ddim.data.shapes`, `ddim.experiments.demo` and `ddim demo`: the generator, pixel FD, report."""

import json
import os
import re
import subprocess
import sys

import torch

from ddim.cli import main
from ddim.data.shapes import shapes
from ddim.experiments.demo import run_demo


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


def test_run_demo_end_to_end_writes_a_report_with_existing_images(tmp_path, small_demo):
    report = run_demo(tmp_path / "demo", settings=small_demo, progress=False)
    assert report == tmp_path / "demo" / "report.html"
    html = report.read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', html)
    expected = {"data.png", "quality_time.png", "consistency.png", "interpolation.png",
                "reconstruction.png"}  # fmt: skip
    assert expected <= set(sources)
    assert all((report.parent / s).is_file() and s.endswith(".png") for s in sources)
    markdown = (report.parent / "report.md").read_text(encoding="utf-8")
    assert set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)) == set(sources)
    for sampler in ("DDIM, η = 0", "DDIM, η = 1", "DDPM, σ̂"):  # one row per sampler and S
        for S in small_demo.sampler_steps:
            assert f"| {sampler} | {S} |" in markdown
    for S in small_demo.sampler_steps:  # 2M at every S below the full chain
        assert (f"| DPM-Solver++(2M) | {S} |" in markdown) == (S < 1000)
    assert "pixel FD" in markdown and "(13.36)" not in markdown  # S = 10 is not in the grid
    results = json.loads((report.parent / "results.json").read_text())
    assert len(results["cells"]) == 4 * len(small_demo.sampler_steps) - 1
    two = [c for c in results["cells"] if c["sampler"] == "DPM-Solver++(2M)"]
    ddim = [c for c in results["cells"] if c["sampler"] == "DDIM, η = 0"]
    assert [c["network_calls"] for c in two] == [c["network_calls"] for c in ddim[:-1]]
    assert "DPM-Solver++(2M) beats DDIM" in markdown or "DPM-Solver++(2M) does not beat" \
        in markdown
    assert [r["steps"] for r in results["reconstruction"]["rows"]] == list(
        small_demo.reconstruction_steps)
    distances = results["consistency"]["mean_abs_difference_to_last"]
    assert len(distances) == len(small_demo.consistency_steps) and distances[-1] == 0.0


def test_cli_help_shows_an_example():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "ddim", "demo", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0
    assert "example:" in result.stdout and "ddim demo -o" in result.stdout


def test_cli_rejects_nonpositive_steps(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "d"), "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
