"""Writing files so that a crash never leaves a half-written one, and naming files by their bytes.

Every file the project writes (checkpoints, sample shards, grids, stats, records) goes through
`atomic_write`: a temporary file in the same folder, flushed and fsync'ed, then renamed over the
target. Temporary names start with "." and end with ".tmp", so no reader's glob ever matches one,
and `remove_stale_temporaries` clears those a killed process left behind.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from ddim.errors import DdimError

TMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write `path` through a temporary file in its folder: fsync, os.replace, fsync the folder.

    `write(tmp)` writes the content to the temporary path. An OSError (disk full, no permission)
    removes the temporary file and becomes a DdimError; the previous `path`, if any, is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise DdimError(f"cannot write {str(path)!r}: it is a folder")
    if path.exists() and not path.is_file():
        raise DdimError(f"cannot write {str(path)!r}: it exists and is not a regular file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as error:
        raise DdimError(f"cannot write {str(path)!r}: {_reason(error)}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):  # a full disk, a read-only folder: the old file is intact
            reason = _reason(error)
            raise DdimError(
                f"cannot write {str(path)!r}: {reason}; the previous file is unchanged"
            ) from None
        raise
    _fsync_directory(path.parent)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write bytes."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def remove_stale_temporaries(folder: str | os.PathLike, stem: str = "") -> list[Path]:
    """Delete the temporary files `atomic_write` left in `folder` (for names starting `stem`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = list(folder.glob(f".{stem}*{TMP_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _reason(error: OSError) -> str:
    """An OSError's reason in a few words."""
    text = error.strerror or str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _umask() -> int:
    """The process's umask (read by setting it and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes (a file's identity in records and stats)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative names and their hashes)."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def cached_file_sha256(path: str) -> str:
    """`file_sha256`, computed once per process for each state of the file (its size and
    modification time), so a file made again at the same path is hashed again."""
    stat = os.stat(path)
    return _file_sha256_of(path, stat.st_size, stat.st_mtime_ns)


@functools.cache
def _file_sha256_of(path: str, size: int, mtime_ns: int) -> str:
    """`file_sha256` of `path` as it was at (`size`, `mtime_ns`)."""
    return file_sha256(path)


def git_commit(directory: str | Path | None = None) -> str | None:
    """The git commit (HEAD) of the library's source tree, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
