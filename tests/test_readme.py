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
