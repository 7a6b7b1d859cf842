"""The README's commands are the ones CI runs."""

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def readme_command(marker: str) -> str:
    """The first line of the bash block that follows `marker` in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index(marker) :]
    block = after[after.index("```bash\n") + len("```bash\n") :]
    return block.splitlines()[0]


def test_ci_runs_the_readme_test_command():
    command = readme_command("Test command")
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in ci_lines


def test_every_command_has_help_with_an_example():
    import subprocess
    import sys

    from ddim.cli import _command_modules

    top = subprocess.run([sys.executable, "-m", "ddim", "--help"], capture_output=True, text=True)
    assert top.returncode == 0, top.stderr
    for name in _command_modules():
        out = subprocess.run(
            [sys.executable, "-m", "ddim", name, "--help"], capture_output=True, text=True
        )
        assert out.returncode == 0, (name, out.stderr)
        assert "example:" in out.stdout and f"ddim {name}" in out.stdout, name


def test_readme_main_job_samples_the_bundled_model(tmp_path, monkeypatch):
    """The README's main-job command, run as written with fewer images: the bundled model."""
    import json
    import shlex

    from ddim.cli import main

    line = readme_command("Main job")
    assert line.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    argv = shlex.split(line.split("&& ")[-1])
    assert argv[:2] == ["ddim", "sample"] and "--ckpt" not in argv
    monkeypatch.chdir(tmp_path)
    assert main([*argv[1:], "--n", "4"]) == 0
    out = tmp_path / argv[argv.index("-o") + 1]
    assert (out / "grid.png").exists()
    with np.load(out / "samples.npz") as npz:
        images = npz["arr_0"]
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    # a trained model's samples are images; an untrained one's are saturated noise (mostly 0/255)
    assert float(np.isin(images, (0, 255)).mean()) < 0.25
    record = json.loads((out / "sample.json").read_text())
    assert Path(record["checkpoint"]).name == "cifar10-32px.safetensors"


def test_readme_second_showcase_runs_at_reduced_size(tmp_path, monkeypatch, small_demo):
    """The README's demo command, run as written except for the demo's sizes."""
    import shlex

    import ddim.experiments.demo as demo_module
    from ddim.cli import main

    argv = shlex.split(readme_command("Second showcase"))
    assert argv[:2] == ["ddim", "demo"]
    monkeypatch.setattr(
        demo_module, "DemoSettings", lambda **kw: type(small_demo)(**{**vars(small_demo), **kw})
    )
    monkeypatch.chdir(tmp_path)
    assert main([*argv[1:], "--steps", "2", "--no-progress"]) == 0
    out = tmp_path / argv[argv.index("-o") + 1]
    assert (out / "report.html").exists() and (out / "report.md").exists()
