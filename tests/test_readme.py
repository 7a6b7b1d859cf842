"""The README's commands are the ones CI runs."""

from pathlib import Path

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
        out = subprocess.run([sys.executable, "-m", "ddim", name, "--help"], capture_output=True,
                             text=True)
        assert out.returncode == 0, (name, out.stderr)
        assert "example:" in out.stdout and f"ddim {name}" in out.stdout, name
