"""No tracked text of README.md, docs/, src/ or tests/ names a folder of the machines the project
was built on: the data folder beside the checkout, or an absolute path under a build machine's
work, root or home folders. Examples and records name files a user has, or name data by name.

What is a machine's path (`machine_paths`): a path that begins at a word boundary (not inside a
URL, a relative path or `~/…`) with one of the folders of `MACHINE_ROOTS`, a user's home on
Linux, macOS or Windows, or, outside tests/, the system's temporary folder; and the relative way
to the data folder beside the checkout, anywhere. System files that code reads (`/dev/null`,
`/proc/meminfo`, `/etc/…`) and paths inside URLs are not machine paths. The strings looked for
are built from parts here, so that this file does not match itself.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("README.md", "docs", "src", "tests")
IMAGES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".ico", ".svg", ".pdf"}

SHARED = re.escape("../" + "shared")
MACHINE_ROOTS = ("work", "root", "scratch", "mnt")  # a build machine's top-level folders
HOMES = r"(?:home|Users)/[A-Za-z0-9._-]+"  # /home/<user>, /Users/<user>
START = r"(?<![\w.~/-])/"  # a path's first slash: not inside a URL, a word or a relative path
ABSOLUTE = START + r"(?:(?:" + "|".join(MACHINE_ROOTS) + r")/|" + HOMES + r"(?:/|\b))"
WINDOWS_HOME = r"\b[A-Za-z]:\\+Users\\"
TEMPORARY = START + "tmp" + "/"  # allowed in tests/, which build their own temporary paths


def machine_paths(text: str, *, test_code: bool = False) -> list[str]:
    """The lines of `text` that name a machine path ("LINE: text"), by the rule of the module."""
    patterns = [SHARED, ABSOLUTE, WINDOWS_HOME] + ([] if test_code else [TEMPORARY])
    rule = re.compile("|".join(f"(?:{p})" for p in patterns))
    lines = enumerate(text.splitlines(), start=1)
    return [f"{number}: {line.strip()}" for number, line in lines if rule.search(line)]


def tracked_text_files() -> list[Path]:
    """The tracked files under SCANNED that are text: not images, no NUL byte, UTF-8."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", *SCANNED], cwd=ROOT,
                                capture_output=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of tracked files")
    files = []
    for name in filter(None, listed.decode().split("\0")):
        path = ROOT / name
        if path.suffix.lower() in IMAGES or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


def test_the_rule_flags_machine_paths():
    flagged = [
        '"/' + 'work/shared/data/x.zip"',
        "ddim train --resume /" + "root/ddim-runs/p21",
        "--data ../" + "shared/data/cifar10-jpeg.zip",
        "cp x /" + "home/alice/",
        "see /" + "Users/bob/runs",
        "path=/" + "mnt/disk/ckpt.pth",
        "C:\\" + "Users\\carol\\ddim",
        "(/" + "work/main/src/ddim/assets/cifar10-32px.safetensors)",
    ]
    for text in flagged:
        assert machine_paths(text), text
    assert machine_paths("out = '/" + "tmp/run'") and not machine_paths(
        "out = '/" + "tmp/run'", test_code=True)


def test_the_rule_leaves_legitimate_paths_alone():
    legitimate = [
        "https://github.com/ermongroup/ddim/blob/main/" + "work/x.py",
        "http://example.org/" + "home/alice/",
        "open('/dev/null') and read /proc/meminfo and /etc/os-release",
        '"""Reads /proc/self/status for the peak memory."""',
        "default ~/.cache/ddim; runs in ~/" + "work/run",
        "src/ddim/" + "work/x and data/" + "root/y and ./" + "home/z",
        "data.path=/data/cifar and refs/cifar10-test.npz",
        "shared the two cores",
    ]
    for text in legitimate:
        assert not machine_paths(text), text


def test_no_tracked_text_names_a_machine_path():
    found = []
    for path in tracked_text_files():
        relative = path.relative_to(ROOT)
        test_code = relative.parts[0] == "tests"
        for line in machine_paths(path.read_text(encoding="utf-8"), test_code=test_code):
            found.append(f"{relative}:{line[:120]}")
    assert not found, "machine paths in tracked files:\n" + "\n".join(found)
