"""The README's commands are the ones CI runs, and every command line it shows parses."""

import shlex
from pathlib import Path

import numpy as np
import pytest

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


def parsed(argv: list[str]):
    """`ddim ARGV` parsed by the real parser; a flag it does not know fails the test."""
    from ddim.cli import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit as error:
        pytest.fail(f"ddim {' '.join(argv)}: the parser refused it (exit {error.code})")


def glance_commands() -> list[list[str]]:
    """The `ddim` command lines of the README's "command line at a glance" (continuation lines
    joined, comments dropped; `torchrun … -m ddim` as what follows `ddim`)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in text.split("```bash\n")[1:]:
        code = block.split("```")[0].replace("\\\n", " ")
        for line in code.splitlines():
            argv = shlex.split(line, comments=True)
            if "ddim" in argv and argv[0] in ("ddim", "torchrun"):
                lines.append(argv[argv.index("ddim") + 1 :])
    return lines


def test_every_command_has_an_example_that_parses(capsys):
    from ddim.cli import _command_modules, build_parser

    for name, module in _command_modules().items():
        for line in module.EXAMPLE.split(" && "):  # `ddim fid` shows its two steps
            argv = shlex.split(line)
            assert argv[:2] == ["ddim", name], module.EXAMPLE
            assert parsed(argv[1:]).command == name
        with pytest.raises(SystemExit):
            build_parser().parse_args([name, "--help"])
        assert module.EXAMPLE in " ".join(capsys.readouterr().out.split())  # shown in --help


def test_every_readme_command_line_parses():
    commands = glance_commands()
    assert {argv[0] for argv in commands} >= {"train", "sample", "fid", "table", "reconstruct",
                                              "interpolate", "trajectory", "encode", "oracle",
                                              "bench", "convert", "demo"}  # fmt: skip
    for argv in commands:
        assert parsed(argv).command == argv[0]
    with pytest.raises(pytest.fail.Exception):  # the check refuses a flag that does not exist
        parsed(["sample", "--stepz", "4"])


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
    assert record["checkpoint"] == "bundled"  # by name: no installation's folder in a record


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
