"""Post-hoc EMA: the snapshot weights against the EMA recursion written out, and the average."""

import pytest
import torch

from ddim.errors import DdimError
from ddim.training.posthoc import average_states, snapshot_weights


def test_snapshots_every_step_reproduce_the_ema_recursion():
    """With a snapshot after every step, the weights equal ema ← d·ema + (1 − d)·net run over the
    same values, d = 0.5^(batch / half-life), once the initial value's share d^n is negligible."""
    batch, halflife, n = 4, 200.0, 2000
    values = torch.randn(n + 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = 0.5 ** (batch / halflife)
    ema = values[0].clone()
    for v in values[1:]:
        ema = d * ema + (1 - d) * v
    images = [batch * (k + 1) for k in range(n + 1)]
    weights = torch.tensor(snapshot_weights(images, halflife), dtype=torch.float64)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float((weights * values).sum()) == pytest.approx(float(ema), abs=1e-9)


def test_weights_follow_the_images_each_snapshot_stands_for():
    # uneven spacing: a snapshot standing for twice the images weighs twice as much, other
    # things equal; a huge half-life gives weights proportional to the spans alone
    weights = snapshot_weights([100, 200, 400, 500], 1e12)
    assert weights == pytest.approx([0.2, 0.2, 0.4, 0.2])
    short = snapshot_weights([100, 200, 300], 10.0)  # almost all on the last snapshot
    assert short[-1] > 0.999


def test_bad_snapshot_lists_are_refused():
    with pytest.raises(DdimError, match="increase"):
        snapshot_weights([100, 100, 200], 50)
    with pytest.raises(DdimError, match="halflife"):
        snapshot_weights([100, 200], 0)
    with pytest.raises(DdimError, match="no snapshots"):
        snapshot_weights([], 50)


def test_average_states_is_the_weighted_sum_key_by_key():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([4.0], dtype=torch.float16)}
    out = average_states([a, b], [0.25, 0.75])
    torch.testing.assert_close(out["w"], torch.tensor([2.5, 5.0]))
    assert out["b"].dtype == torch.float16 and float(out["b"]) == 3.0
    with pytest.raises(DdimError, match="other tensors"):
        average_states([a, {"w": a["w"]}], [0.5, 0.5])


def test_the_script_writes_ema_labelled_files_that_keep_the_lineage(tmp_path, blobs, small_config):
    """benchmarks/ema_posthoc.py over a run's checkpoints: one file per half-life, its one set of
    weights labelled EMA (so `--raw` is refused), with the last snapshot's images seen and init."""
    import subprocess
    import sys
    from pathlib import Path

    from ddim.checkpoint import load_checkpoint
    from ddim.training import train

    run = tmp_path / "run"
    train(small_config(), run, images=blobs(16), max_steps=4, checkpoint_every=2, keep=10,
          sample_every=0, progress=False)  # fmt: skip
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ema_posthoc.py"
    result = subprocess.run([sys.executable, str(script), str(run), "--halflife-kimg", "0.01",
                             "-o", str(tmp_path / "ph")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    average = load_checkpoint(tmp_path / "ph" / "ema-0.01kimg.safetensors")
    last = load_checkpoint(run / "checkpoints" / "ckpt-00000004.safetensors")
    assert average.weights_label() == "ema" and average.images_seen == last.images_seen == 32
    assert average.meta["extra"]["init"] == last.meta["extra"]["init"]
    with pytest.raises(DdimError, match="no raw weights"):
        average.weights(use_ema=False)
