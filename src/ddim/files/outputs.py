"""Outputs hold the results of one recorded setting: the contract every command that writes keeps.

An output is a folder (`ddim sample -o samples`) or a file (`-o strip.png`), described by the
names the command owns in its folder and by a record, a JSON file of the settings that made its
contents (`OUT/settings.json` for a folder, `NAME.settings.json` beside a file). `claim_output`
holds it for one command:

- another process writing it at the same time is refused (a lock, `ddim.files.lock`);
- temporary files a killed or failed run left there are deleted;
- a record equal to the new settings means the contents are reused (a resume, or a redo that
  makes the same file); other settings, or owned files without a record, are refused with one
  line naming the first setting that differs, unless `overwrite`: a folder's owned files are
  then deleted first, a file is replaced atomically when the new one is complete;
- the record is written before any result, so whatever a killed run leaves is covered by it.

Only the owned names are ever deleted: `-o .` with `overwrite` removes the command's own files,
nothing else in the folder.
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
    """Where a command writes: the `names` it owns inside `folder`, described by `record`."""

    folder: Path
    names: tuple[str, ...]
    record: str
    shown: str  # the output as the user named it, for messages
    is_folder: bool


def folder_output(path: str | os.PathLike, names: tuple[str, ...]) -> Output:
    """An output folder holding `names` (files and sub-folders), its record `settings.json`."""
    path = Path(path)
    return Output(path, tuple(names), RECORD, str(path), is_folder=True)


def file_output(path: str | os.PathLike, beside: tuple[str, ...] = ()) -> Output:
    """An output file (with files `beside` it, e.g. its JSON), its record `NAME.settings.json`."""
    path = Path(path)
    names = (path.name, *beside)
    return Output(path.parent, names, f"{path.name}.{RECORD}", str(path), is_folder=False)


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
        recorded = _read_record(output.folder / output.record)
        if overwrite:
            _delete(output, present)
        elif present:
            _check_same(output, recorded, settings)
        write_text(output.folder / output.record, json.dumps({"settings": settings}, indent=2))
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


def _read_record(path: Path) -> dict | None:
    """The settings in a record file, or None if there is none or it cannot be read."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("settings") if isinstance(record, dict) else None


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
    output is left for `atomic_write` to replace, so a failed run does not lose it.)"""
    for name in present if output.is_folder else ():
        path = output.folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    (output.folder / output.record).unlink(missing_ok=True)
