"""Outputs hold the results of one recorded setting: the contract every command that writes keeps.

An output is a folder (`ddim sample -o samples`) or a file (`-o strip.png`), described by the
names the command owns in its folder and by a record, a JSON file of the command, the names it
owns and the settings that made its contents (`OUT/settings.json` for a folder,
`NAME.settings.json` beside a file). `claim_output` holds it for one command:

- another process writing it at the same time is refused (a lock, `ddim.files.lock`);
- temporary files a killed or failed run left there are deleted;
- a record of another command is refused naming that command, unless `overwrite`, which then
  deletes that command's owned names too: two commands never share one record;
- a record equal to the new settings means the contents are reused (a resume, or a redo that
  makes the same file); other settings, or owned files without a record, are refused with one
  line naming the first setting that differs, unless `overwrite`: a folder's owned files are
  then deleted first, a file is replaced atomically when the new one is complete;
- of a reused folder, only the names a rerun continues (`reused`, e.g. `ddim sample`'s shards)
  survive the claim; every other owned name (a grid, an `.npz`, a PNG folder, a summary) is made
  again by each run, so it is deleted: nothing a run did not make (an `.npz` under `--no-npz`,
  PNGs beyond the new N) survives beside the new record;
- a file output may keep its work in progress beside it (`reused`, e.g. `ddim encode`'s
  shards): a rerun of the same settings continues it, `overwrite` deletes it;
- the record is written before any result, so whatever a killed run leaves is covered by it.

Only owned names are ever deleted: `-o .` with `overwrite` removes the command's own files (and
those another command's record names as its own), nothing else in the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddim.errors import DdimError
from ddim.files.atomic import remove_stale_temporaries, write_text
from ddim.files.lock import folder_lock

RECORD = "settings.json"


@dataclass(frozen=True)
class Output:
    """Where a command writes: the `names` it owns inside `folder`, described by `record`;
    `reused` are the names a rerun of the same settings continues (None: all of them)."""

    folder: Path
    names: tuple[str, ...]
    record: str
    shown: str  # the output as the user named it, for messages
    is_folder: bool
    command: str = ""  # the command that writes it, recorded ("" : not named)
    reused: tuple[str, ...] | None = None


def folder_output(
    path: str | os.PathLike,
    names: tuple[str, ...],
    *,
    command: str = "",
    reused: tuple[str, ...] | None = None,
) -> Output:
    """An output folder holding `names` (files and sub-folders), its record `settings.json`;
    `reused` names what a rerun continues (the rest is made again), None for everything."""
    path = Path(path)
    if reused is not None and not set(reused) <= set(names):
        raise ValueError(f"reused names {reused} are not among the owned names {names}")
    return Output(path, tuple(names), RECORD, str(path), True, command,
                  None if reused is None else tuple(reused))


def file_output(
    path: str | os.PathLike,
    beside: tuple[str, ...] = (),
    *,
    command: str = "",
    reused: tuple[str, ...] | None = None,
) -> Output:
    """An output file (with files `beside` it, e.g. its JSON), its record `NAME.settings.json`.
    `reused` names what beside it holds work a rerun of the same settings continues (`ddim
    encode`'s shards): `overwrite` deletes it, where the files themselves are replaced
    atomically once made."""
    path = Path(path)
    names = (path.name, *beside)
    if reused is not None and not set(reused) <= set(beside):
        raise ValueError(f"reused names {reused} are not among the names beside it {beside}")
    return Output(path.parent, names, f"{path.name}.{RECORD}", str(path), False, command,
                  None if reused is None else tuple(reused))


def read_record(output: Output) -> dict | None:
    """An output's record as written: {"command", "owns", "settings"} (the first two empty in
    records of older versions), or None if there is none or it cannot be read."""
    try:
        record = json.loads((output.folder / output.record).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        return None
    owns = record.get("owns") if isinstance(record.get("owns"), list) else []
    command = record.get("command") if isinstance(record.get("command"), str) else ""
    return {"command": command, "owns": [n for n in owns if _plain_name(n)],
            "settings": record["settings"]}


def _plain_name(name: Any) -> bool:
    """A record's owned name that may be deleted: one plain entry of the folder, nothing above
    or beside it (a record is a file from outside)."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name)


@contextlib.contextmanager
def claim_output(
    output: Output, settings: dict[str, Any], *, overwrite: bool = False, active: bool = True
) -> Iterator[bool]:
    """Hold `output` for `settings` during the block; yield True if it already holds results of
    these settings (reuse them), False if it starts empty. Inactive (other torchrun ranks): no-op.
    """
    if not active:
        yield False
        return
    _check_kind(output)
    settings = json.loads(json.dumps(settings))  # the form the record is read back in
    with folder_lock(output.folder / f".{output.record}.lock", f"output {output.shown}"):
        _remove_temporaries(output)
        present = [name for name in output.names if _holds_something(output.folder / name)]
        recorded = read_record(output)
        other = _other_command(output, recorded)
        if overwrite:  # the other command's names go too: nothing of it stays beside ours
            _delete_names(output, [n for n in recorded["owns"] if n not in output.names]
                          if other else [])
            _delete(output, present)
        elif other:
            _refuse_other_command(output, other)
        elif present:
            _check_same(output, None if recorded is None else recorded["settings"], settings)
            _delete_remade(output, present)
        record = {"command": output.command, "owns": list(output.names), "settings": settings}
        write_text(output.folder / output.record, json.dumps(record, indent=2))
        yield bool(present) and not overwrite


def _check_kind(output: Output) -> None:
    """A folder output must be a folder, a file output a regular file (never a device node)."""
    folder = output.folder
    if folder.exists() and not folder.is_dir():
        what = "output folder" if output.is_folder else "folder of the output"
        raise DdimError(f"the {what} {str(folder)!r} exists and is not a folder")
    if not output.is_folder:
        target = folder / output.names[0]
        if target.is_dir():
            raise DdimError(f"the output {output.shown!r} is a folder; give a file name")
        if target.exists() and not target.is_file():
            raise DdimError(
                f"the output {output.shown!r} exists and is not a regular file (a device or "
                "special file); ddim writes regular files only"
            )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DdimError(f"cannot create {str(folder)!r}: {error.strerror or error}") from None


def _holds_something(path: Path) -> bool:
    """A file, or a folder with anything in it."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _remove_temporaries(output: Output) -> None:
    """Delete what `atomic_write` left after a kill: beside the owned names and inside them."""
    for name in (*output.names, output.record):
        remove_stale_temporaries(output.folder, name)
        remove_stale_temporaries(output.folder / name)


def _other_command(output: Output, recorded: dict | None) -> str | None:
    """The command whose record the output holds, if another than `output.command`."""
    if recorded is None or not recorded["command"] or not output.command:
        return None
    return None if recorded["command"] == output.command else recorded["command"]


def _refuse_other_command(output: Output, other: str) -> None:
    """Refuse to take over, or add to, the output of another command."""
    raise DdimError(
        f"{output.shown} holds the output of `ddim {other}` (its record {output.record}); "
        f"`ddim {output.command}` will not replace it: write elsewhere, or pass --overwrite to "
        "replace it"
    )


def _delete_remade(output: Output, present: list[str]) -> None:
    """Delete a folder's owned names a rerun makes again (all but `reused`): what this run does
    not make must not survive beside its record. (A file output's files are replaced
    atomically when made again.)"""
    if output.is_folder and output.reused is not None:
        _delete_names(output, [name for name in present if name not in output.reused])


def _check_same(output: Output, recorded: dict | None, settings: dict) -> None:
    """Refuse to add to or replace results made with other (or unrecorded) settings."""
    hint = "pass --overwrite to replace them, or write elsewhere"
    if recorded is None:
        raise DdimError(
            f"{output.shown} already holds results and no record of their settings "
            f"({output.record}); {hint}"
        )
    differences = _differences(recorded, settings)
    if differences:
        key, old, new = differences[0]
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise DdimError(
            f"{output.shown} holds results of other settings: {key} was {_short(old)}, "
            f"now {_short(new)}{more}; {hint}"
        )


def _differences(old: Any, new: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for k in [*old, *(k for k in new if k not in old)]:
            found += _differences(old.get(k), new.get(k), f"{key}.{k}" if key else k)
        return found
    return [] if old == new else [(key or "settings", old, new)]


def _short(value: Any, limit: int = 60) -> str:
    """A JSON value as text of at most `limit` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _delete(output: Output, present: list[str]) -> None:
    """Remove the record, and a folder output's owned files and folders: nothing else. (A file
    output is left for `atomic_write` to replace, so a failed run does not lose it; the work in
    progress beside it, `reused`, goes: it was made with the settings being replaced.)"""
    if output.is_folder:
        _delete_names(output, present)
    else:
        _delete_names(output, [name for name in present if name in (output.reused or ())])
    (output.folder / output.record).unlink(missing_ok=True)


def _delete_names(output: Output, names: list[str]) -> None:
    """Remove these entries of the output's folder (files, or folders with what they hold)."""
    for name in names:
        path = output.folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
