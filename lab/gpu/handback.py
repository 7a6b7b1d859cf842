"""What a GPU run hands back, and how it is put together again: files split into parts of at most
15.5 MiB (under the harness's limit of 16 MiB a file), a small tar.gz of records, and
`manifest.json` with the SHA-256 of every original and of every part. lab/gpu/run.py writes them;
lab/gpu/unpack.py joins and checks them.

Every name is made of letters, digits, '.', '_' and '-', and the folder holds nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from pathlib import Path

from lab.gpu.rules import PART_BYTES

MANIFEST = "manifest.json"
FORMAT = "ddim-gpu-run/1"
NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_name(name: str) -> str:
    """`name` if it is made of letters, digits, '.', '_' and '-' only; else ValueError."""
    if not NAME.match(name) or name in (".", ".."):
        raise ValueError(f"{name!r}: a returned file's name must be letters, digits, '.', '_', '-'")
    return name


def split_file(source: Path, folder: Path, name: str, part_bytes: int = PART_BYTES) -> dict:
    """Copy `source` into `folder` as name.00, name.01, … of at most `part_bytes` each (one part
    named `name` itself when it fits whole); return its manifest entry."""
    check_name(name)
    size = source.stat().st_size
    whole = size <= part_bytes
    parts = []
    with open(source, "rb") as f:
        for k in range(max(1, -(-size // part_bytes))):
            part = name if whole else check_name(f"{name}.{k:02d}")
            data = f.read(part_bytes)
            _write(folder / part, data)
            parts.append({"file": part, "bytes": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
    return {"name": name, "bytes": size, "sha256": sha256_file(source), "parts": parts}


def _write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name, so a killed run leaves no half file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pack_tree(source: Path, destination: Path, arcname: str) -> None:
    """The files of folder `source` as a .tar.gz at `destination` (under `arcname`/), written
    through a temporary name; temporary files, and files that vanish meanwhile, are left out."""
    tmp = destination.with_name(destination.name + ".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for path in sorted(source.rglob("*")):
            if path.is_file() and not path.name.endswith(".tmp"):
                try:
                    tar.add(path, arcname=f"{arcname}/{path.relative_to(source).as_posix()}")
                except FileNotFoundError:
                    continue
    os.replace(tmp, destination)


def write_manifest(folder: Path, entries: list[dict], run: dict) -> Path:
    """manifest.json: the format, what the run was, and each original with its parts."""
    record = {"format": FORMAT, "run": run, "files": entries}
    path = folder / MANIFEST
    _write(path, (json.dumps(record, indent=2) + "\n").encode())
    return path


def read_manifest(folder: Path) -> dict:
    """The manifest of a folder of returned files, checked for its format."""
    record = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    if record.get("format") != FORMAT:
        raise ValueError(f"{folder / MANIFEST} is not a {FORMAT} manifest")
    return record


def join_parts(folder: Path, entry: dict, destination: Path) -> None:
    """Join an entry's parts from `folder` into `destination`, checking every part's and the
    whole file's SHA-256 and size; a mismatch is a ValueError naming the file."""
    check_name(entry["name"])
    digest, size = hashlib.sha256(), 0
    tmp = destination.with_name(destination.name + ".tmp")
    with open(tmp, "wb") as out:
        for part in entry["parts"]:
            path = folder / check_name(part["file"])
            if not path.is_file():
                raise ValueError(f"{part['file']}: missing (a part of {entry['name']})")
            data = path.read_bytes()
            if len(data) != part["bytes"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
                raise ValueError(f"{part['file']}: its size or SHA-256 is not the manifest's")
            digest.update(data)
            size += len(data)
            out.write(data)
    if size != entry["bytes"] or digest.hexdigest() != entry["sha256"]:
        tmp.unlink()
        raise ValueError(f"{entry['name']}: the joined parts are not the original (SHA-256)")
    os.replace(tmp, destination)
