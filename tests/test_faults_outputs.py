"""An output folder holds only what its current settings made: files a previous run left that
this run does not make are deleted when the output is claimed (or refused by their reader), and
two commands never share, or silently replace, one record.
docs/reliability.md lists the classes and their guarantees."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import ddim.cli
from ddim import evaluation
from ddim.errors import DdimError
from ddim.files import claim_output, file_output, folder_output, read_record

SETTINGS = {"steps": 50, "seed": 0}
SAMPLE_NAMES = ("parts", "grid.png", "samples.npz", "png", "sample.json")


def run(capsys, *argv) -> tuple[int, str]:
    """`ddim *argv` in-process: (exit code, the last line on stderr)."""
    capsys.readouterr()
    code = ddim.cli.main([str(a) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


def claim(output, settings=SETTINGS, **kwargs) -> bool:
    """Claim an output and return whether it is reused (the block does nothing)."""
    with claim_output(output, settings, **kwargs) as reused:
        return reused


def files(folder: Path) -> set[str]:
    """Every file under a folder, as relative paths (locks aside)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and not p.name.endswith(".lock")}


def a_sample_folder(folder: Path, pngs: int = 10) -> Path:
    """What `ddim sample --n 10 --png` leaves: shards, grid, npz, PNGs, summary and its record."""
    output = folder_output(folder, SAMPLE_NAMES, command="sample", reused=("parts",))
    claim(output)
    (folder / "parts").mkdir()
    (folder / "parts" / "part-0000000.npz").write_bytes(b"shard")
    for name in ("grid.png", "samples.npz", "sample.json"):
        (folder / name).write_bytes(b"made")
    (folder / "png").mkdir()
    for k in range(pngs):
        (folder / "png" / f"{k:06d}.png").write_bytes(b"png")
    return folder


# --- what a run does not make does not survive beside its record --------------------------------


def test_a_rerun_keeps_only_the_work_it_continues(tmp_path):
    folder = a_sample_folder(tmp_path / "s")
    (folder / "notes.txt").write_text("mine")
    output = folder_output(folder, SAMPLE_NAMES, command="sample", reused=("parts",))
    assert claim(output)  # the same settings: reused
    assert files(folder) == {"parts/part-0000000.npz", "settings.json", "notes.txt"}
    assert (folder / "parts" / "part-0000000.npz").read_bytes() == b"shard"
    record = read_record(output)
    assert record == {"command": "sample", "owns": list(SAMPLE_NAMES), "settings": SETTINGS}


def test_refused_settings_delete_nothing(tmp_path):
    folder = a_sample_folder(tmp_path / "s")
    before = {p: hashlib.sha256((folder / p).read_bytes()).hexdigest() for p in files(folder)}
    output = folder_output(folder, SAMPLE_NAMES, command="sample", reused=("parts",))
    with pytest.raises(DdimError, match="steps was 50, now 20"):
        claim(output, {"steps": 20, "seed": 0})
    assert {p: hashlib.sha256((folder / p).read_bytes()).hexdigest() for p in files(folder)} \
        == before


def test_outputs_that_name_nothing_reused_keep_every_name(tmp_path):
    """Commands that have not said what they continue keep today's behaviour (all reused)."""
    folder = a_sample_folder(tmp_path / "s")
    assert claim(folder_output(folder, SAMPLE_NAMES, command="sample"))
    assert len(files(folder)) == 15
    with pytest.raises(ValueError, match="not among the owned names"):
        folder_output(folder, ("a",), reused=("b",))


def test_a_file_outputs_work_in_progress_is_continued_or_overwritten(tmp_path):
    """`ddim encode`'s shards beside its .npz: a rerun of the same settings continues them;
    --overwrite deletes them (other settings made them), and leaves the file to be replaced."""
    output = file_output(tmp_path / "l.npz", beside=("l.npz.parts",), command="encode",
                         reused=("l.npz.parts",))  # fmt: skip
    assert not claim(output)
    (tmp_path / "l.npz.parts").mkdir()
    (tmp_path / "l.npz.parts" / "part-0000000.npz").write_bytes(b"shard")
    (tmp_path / "l.npz").write_bytes(b"old")
    assert claim(output)
    assert files(tmp_path) == {"l.npz", "l.npz.settings.json", "l.npz.parts/part-0000000.npz"}
    assert not claim(output, {"steps": 20, "seed": 0}, overwrite=True)
    assert files(tmp_path) == {"l.npz", "l.npz.settings.json"}
    assert (tmp_path / "l.npz").read_bytes() == b"old"  # replaced once the new one is made
    with pytest.raises(ValueError, match="not among the names beside it"):
        file_output(tmp_path / "l.npz", reused=("l.npz.parts",))


def test_a_killed_rerun_leaves_no_old_summary_to_trust(tmp_path):
    """The summary is made again by every run: deleted at the claim, a killed run leaves none."""
    folder = a_sample_folder(tmp_path / "s")
    output = folder_output(folder, SAMPLE_NAMES, command="sample", reused=("parts",))
    with pytest.raises(KeyboardInterrupt), claim_output(output, SETTINGS):
        raise KeyboardInterrupt
    assert not (folder / "sample.json").exists() and (folder / "parts").is_dir()


# --- the case: fid calc read 4 stale images while the record said 8 ---------------------


def _fake_inception(monkeypatch):
    seen = []

    def fake_stats(images, *, source, **_):
        seen.append(len(images))
        return evaluation.FidStats(np.zeros(2), np.eye(2), len(images), "h", "c", source)

    monkeypatch.setattr(evaluation.stats_file, "stats_from_images", fake_stats)
    return seen


def _reference(path: Path) -> Path:
    from ddim.evaluation import CONVENTION, FidStats, network_sha256, save_stats

    return save_stats(FidStats(np.zeros(2), np.eye(2), 10, network_sha256(), CONVENTION,
                               "made by hand", 8), path)


def _sample(ckpt, out, *extra):
    return ["sample", "--ckpt", ckpt, "--steps", "1", "--batch", "4", "--device", "cpu",
            "-o", out, *extra]


@pytest.mark.parametrize(("first", "second", "scored", "refused"), [
    (["--n", "4"], ["--n", "8", "--no-npz"], None, "without samples.npz or png/"),  # npz gone
    (["--n", "6", "--png", "--no-npz"], ["--n", "3", "--png", "--no-npz"], [3], None),  # 3 PNGs
])  # fmt: skip
def test_fid_calc_scores_only_what_the_last_run_made(first, second, scored, refused,
                                                     tiny_checkpoint, tmp_path, capsys,
                                                     monkeypatch):  # fmt: skip
    """A rerun deletes what it does not make (`ddim sample` continues its shards only), so
    `fid calc` finds no images of an earlier run beside the new record."""
    out, ref = tmp_path / "s", _reference(tmp_path / "ref.npz")
    assert run(capsys, *_sample(tiny_checkpoint, out, *first))[0] == 0
    assert run(capsys, *_sample(tiny_checkpoint, out, *second))[0] == 0
    seen = _fake_inception(monkeypatch)
    code, error = run(capsys, "fid", "calc", out, "--ref", ref, "--device", "cpu")
    assert (code, seen) == ((0, scored) if scored else (2, []))
    assert refused is None or refused in error


def test_fid_calc_refuses_images_beside_a_record_of_another_n(tiny_checkpoint, tmp_path, capsys,
                                                              monkeypatch):  # fmt: skip
    """The reader's check, for a folder whose stale file came from elsewhere (by hand, or an
    older version that kept it)."""
    out, ref = tmp_path / "s", _reference(tmp_path / "ref.npz")
    assert run(capsys, *_sample(tiny_checkpoint, out, "--n", "8", "--no-npz"))[0] == 0
    np.savez(out / "samples.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    seen = _fake_inception(monkeypatch)
    code, error = run(capsys, "fid", "calc", out, "--ref", ref, "--device", "cpu")
    assert code == 2 and "records 8: they were left by an earlier run" in error and seen == []
    assert f"{out / 'samples.npz'} holds 4 images" in error


def test_fid_calc_refuses_a_sample_folder_whose_run_did_not_finish(tmp_path, capsys,
                                                                   monkeypatch):
    folder = tmp_path / "s"
    claim(folder_output(folder, SAMPLE_NAMES, command="sample", reused=("parts",)))
    np.savez(folder / "samples.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))  # no sample.json
    seen = _fake_inception(monkeypatch)
    code, error = run(capsys, "fid", "calc", folder, "--ref", _reference(tmp_path / "r.npz"),
                      "--device", "cpu")
    assert code == 2 and "no readable sample.json" in error and seen == []


# --- two commands, one folder -------------------------------------------------------------------


def test_another_commands_output_is_refused_naming_it(tmp_path):
    folder = a_sample_folder(tmp_path / "s")
    theirs = folder_output(folder, ("reconstruct.md", "reconstruct.json"), command="reconstruct")
    before = files(folder)
    with pytest.raises(DdimError, match=r"holds the output of `ddim sample` .* --overwrite"):
        claim(theirs, {"other": 1})
    assert files(folder) == before and read_record(theirs)["command"] == "sample"
    # --overwrite replaces it whole: the other command's names go too, a stranger's file stays
    (folder / "notes.txt").write_text("mine")
    assert not claim(theirs, {"other": 1}, overwrite=True)
    assert files(folder) == {"settings.json", "notes.txt"}
    assert read_record(theirs)["command"] == "reconstruct"


def test_another_commands_file_output_is_refused(tmp_path):
    path = tmp_path / "result.json"
    claim(file_output(path, command="oracle"))
    path.write_text("oracle's table")
    with pytest.raises(DdimError, match=r"holds the output of `ddim oracle`"):
        claim(file_output(path, command="fid calc"))
    assert path.read_text() == "oracle's table"


def test_a_forged_record_cannot_make_overwrite_delete_outside_the_folder(tmp_path):
    folder, outside = tmp_path / "out", tmp_path / "keep.txt"
    folder.mkdir()
    outside.write_text("keep")
    (folder / "sub").mkdir()
    (folder / "sub" / "x").write_text("keep")
    (folder / "settings.json").write_text(json.dumps({
        "command": "sample", "owns": ["../keep.txt", "sub/x", "..", "", "/etc/passwd"],
        "settings": {}}))  # fmt: skip
    claim(folder_output(folder, ("a",), command="demo"), overwrite=True)
    assert outside.read_text() == "keep" and (folder / "sub" / "x").read_text() == "keep"


def test_records_of_older_versions_are_read_as_the_same_command(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "grid.png").write_bytes(b"old")
    (folder / "settings.json").write_text(json.dumps({"settings": SETTINGS}))
    assert claim(folder_output(folder, SAMPLE_NAMES, command="sample"))


def test_the_command_line_refuses_another_commands_folder(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "hf"
    assert run(capsys, "convert", tiny_checkpoint, out)[0] == 0
    before = files(out)
    code, error = run(capsys, "demo", "-o", out, "--steps", "1")  # refused before training
    assert code == 2 and "holds the output of `ddim convert`" in error and files(out) == before
    table = tmp_path / "t.md"
    assert run(capsys, "oracle", "--n", "10", "--steps", "1", "-o", table)[0] == 0
    images = tmp_path / "x.npz"
    np.savez(images, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    code, error = run(capsys, "fid", "calc", images, "--ref", _reference(tmp_path / "r.npz"),
                      "--json", table, "--device", "cpu")
    assert code == 2 and "t.md holds the output of `ddim oracle`" in error


# --- every sampling command names itself, and what a rerun continues ----------------------------

SAMPLING_OUTPUTS = {  # command -> (its arguments, its output: a folder, or a file with a record)
    "sample": (["--n", "2", "--steps", "1", "--png"], "s", True),
    "reconstruct": (["--images", "data.npz", "--n", "2", "--steps", "1"], "r", True),
    "encode": (["--images", "data.npz", "--n", "2", "--steps", "1"], "l.npz", False),
    "interpolate": (["--seeds", "1", "2", "--num", "2", "--steps", "1"], "i.png", False),
    "trajectory": (["--steps", "1", "--show", "1"], "t.png", False),
}


def _output(name: str, is_folder: bool):
    return folder_output(name, ()) if is_folder else file_output(name)


def test_every_sampling_command_names_itself_in_its_record(tiny_checkpoint, tmp_path, capsys,
                                                           monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    np.savez("data.npz", arr_0=np.zeros((3, 8, 8, 3), np.uint8))
    for command, (argv, out, is_folder) in SAMPLING_OUTPUTS.items():
        code, error = run(capsys, command, "--ckpt", tiny_checkpoint, "--device", "cpu", *argv,
                          "-o", out)  # fmt: skip
        assert code == 0, error
        assert read_record(_output(out, is_folder))["command"] == command
    # another command into one of them is refused, naming the one whose output it is
    for command, into, owner in [("reconstruct", "s", "sample"), ("sample", "r", "reconstruct"),
                                 ("trajectory", "i.png", "interpolate"),
                                 ("interpolate", "t.png", "trajectory")]:  # fmt: skip
        before = files(tmp_path)
        argv = SAMPLING_OUTPUTS[command][0]
        code, error = run(capsys, command, "--ckpt", tiny_checkpoint, "--device", "cpu", *argv,
                          "-o", into)  # fmt: skip
        assert code == 2 and f"holds the output of `ddim {owner}`" in error, error
        assert files(tmp_path) == before


def test_a_sample_rerun_continues_its_shards_and_remakes_the_rest(tiny_checkpoint, tmp_path,
                                                                  capsys):  # fmt: skip
    out = tmp_path / "s"
    assert run(capsys, *_sample(tiny_checkpoint, out, "--n", "3", "--png"))[0] == 0
    shards = {p: p.read_bytes() for p in (out / "parts").iterdir()}
    assert run(capsys, *_sample(tiny_checkpoint, out, "--n", "3", "--no-npz"))[0] == 0
    assert not (out / "png").exists() and not (out / "samples.npz").exists()  # not made: gone
    assert {p: p.read_bytes() for p in (out / "parts").iterdir()} == shards  # continued
    assert read_record(folder_output(out, ()))["owns"] == list(SAMPLE_NAMES)


# --- ddim table recognises its own cells by content ---------------------------------------------


def test_a_table_resumes_from_copied_inputs_and_refuses_another_reference(
    tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    """The record holds the weights' and the reference's SHA-256, not their paths: the same
    files copied elsewhere and named by relative paths continue the table (no --overwrite, no
    cell scored again); a reference of other content is refused, the cells kept."""
    from ddim.evaluation import Scores

    scored = []
    monkeypatch.setattr(evaluation.scoring, "compute_scores", lambda images, ref, **_: (
        scored.append(sum(map(len, images))) or Scores(1.0, None)))
    out = tmp_path / "t"
    first = tmp_path / "first"
    first.mkdir()
    ckpt = first / "model.safetensors"
    ckpt.write_bytes(Path(tiny_checkpoint).read_bytes())
    _reference(first / "ref.npz")
    table = ["table", "--n", "2", "--steps", "1", "2", "--etas", "0", "--device", "cpu"]
    code, error = run(capsys, *table, "--ckpt", ckpt, "--ref", first / "ref.npz", "--steps", "1",
                      "-o", out)  # fmt: skip
    assert code == 0 and scored == [2], error
    # the same bytes elsewhere, by relative paths, one more column: only the new cell is scored
    copies = tmp_path / "copies"
    copies.mkdir()
    (copies / "c.safetensors").write_bytes(ckpt.read_bytes())
    (copies / "r.npz").write_bytes((first / "ref.npz").read_bytes())
    monkeypatch.chdir(copies)
    code, error = run(capsys, *table, "--ckpt", "c.safetensors", "--ref", "r.npz", "-o", out)
    assert code == 0 and scored == [2, 2], error
    record = json.loads((out / "table.json").read_text())
    assert sorted(record["cells"]) == ["eta=0.0,S=1", "eta=0.0,S=2"]
    assert read_record(folder_output(out, ()))["command"] == "table"
    assert record["inputs"] == {"checkpoint": "c.safetensors", "reference": "r.npz"}
    assert "r.npz" in (out / "table.md").read_text()
    # a reference of other content (its n differs): refused naming it, nothing changed
    before = {p: (out / p).read_bytes() for p in files(out)}
    other = _reference(copies / "other.npz")
    other_stats = evaluation.load_stats(other)
    evaluation.save_stats(dataclasses.replace(other_stats, n=11), other)
    code, error = run(capsys, *table, "--ckpt", "c.safetensors", "--ref", "other.npz", "-o", out)
    assert code == 2 and "reference.sha256 was" in error and scored == [2, 2]
    assert {p: (out / p).read_bytes() for p in files(out)} == before
