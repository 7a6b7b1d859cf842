"""Fetch a named source into the cache once: resumable, verified, atomic, one process at a time.

    fetch(source)
      1. cached and verified           -> its path, with no network call
      2. offline (DDIM_OFFLINE)        -> one line: the source, its MD5, where to put it by hand
      3. lock FILENAME.lock            -> a second process fetching the same name waits, then
                                          finds the file the first one finished
      4. download into FILENAME.part   -> an HTTP Range request continues a .part an earlier,
                                          interrupted run left; a dropped connection is continued
                                          from where it stopped, while bytes keep coming
      5. MD5 of the whole .part        -> a mismatch deletes it: nothing is left behind
      6. rename .part to FILENAME      -> only now does the name exist; FILENAME.md5 records the
                                          check, so a later run trusts it without rereading

A file put into the cache by hand is checked once, on first use, and recorded the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ddim.errors import DdimError
from ddim.files import write_text
from ddim.hub.cache import MIRROR_ENV, OFFLINE_ENV, cached_file, is_offline, source_url
from ddim.hub.sources import Source
from ddim.progress import progress_bar
from ddim.version import __version__

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None

PART, LOCK, CHECKED = ".part", ".lock", ".md5"
RETRIES = 3  # drops in a row with no new byte before a download is given up
TIMEOUT_S = 60.0  # seconds without a byte before a connection counts as dropped
CHUNK = 1 << 20


class _Dropped(Exception):
    """The connection ended before the file did (the .part keeps what arrived)."""


def fetch(source: Source, *, progress: bool = True) -> Path:
    """The verified file of `source` in the cache, downloaded first if it is not there."""
    target = cached_file(source)
    if _verified(source, target):
        return target
    url = source_url(source)
    if is_offline():
        raise DdimError(manual_route(source, url, target, f"{OFFLINE_ENV} is set"))
    with cache_lock(target, source.name):
        if _verified(source, target):  # another process finished it while this one waited
            return target
        part = target.with_name(target.name + PART)
        _download(source, url, part, progress)
        _check_md5(source, part, url)
        os.replace(part, target)
        _record_check(source, target)
    return target


def manual_route(source: Source, url: str, target: Path, why: str) -> str:
    """One line for a source that cannot be fetched: where from, its MD5, where to put it."""
    return (
        f"{source.name} is not in the cache and {why}: download {url} (MD5 {source.md5}) by "
        f"hand and put it at {target}, or set {MIRROR_ENV} to a server that has "
        f"{source.filename}"
    )


# --- the cache's record of checked files -------------------------------------------------------


def cache_state(source: Source) -> str:
    """"cached" (checked), "unchecked" (put there by hand: checked on first use) or "missing";
    reads no file's bytes."""
    target = cached_file(source)
    if not target.is_file():
        return "missing"
    return "cached" if _checked_record(target) == _stamp(source, target) else "unchecked"


def _verified(source: Source, target: Path) -> bool:
    """Whether `target` holds `source`: recorded as checked (same size and time), or checked now
    (a file put there by hand); a file that fails the check is an error naming it."""
    if not target.is_file():
        return False
    if _checked_record(target) == _stamp(source, target):
        return True
    digest = md5_of(target)
    if digest != source.md5:
        raise DdimError(
            f"{target} is in the cache but its MD5 is {digest}, not {source.name}'s "
            f"{source.md5}: delete it and fetch again"
        )
    _record_check(source, target)
    return True


def _stamp(source: Source, target: Path) -> str:
    """What the check of a file records: the MD5 it matched, its size and modification time."""
    stat = target.stat()
    return f"{source.md5} {stat.st_size} {stat.st_mtime_ns}\n"


def _checked_record(target: Path) -> str | None:
    """The recorded check of `target`, if any."""
    try:
        return target.with_name(target.name + CHECKED).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _record_check(source: Source, target: Path) -> None:
    """Record that `target` passed its check (skipped where the cache is read-only)."""
    with contextlib.suppress(DdimError):
        write_text(target.with_name(target.name + CHECKED), _stamp(source, target))


def md5_of(path: Path) -> str:
    """MD5 hex digest of a file (the checksum the sources publish)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_md5(source: Source, part: Path, url: str) -> None:
    """Refuse and delete a downloaded file whose MD5 is not the published one."""
    digest = md5_of(part)
    if digest != source.md5:
        part.unlink(missing_ok=True)
        raise DdimError(
            f"{url} gave a file whose MD5 is {digest}, not {source.name}'s {source.md5} (a "
            "proxy's page, a changed file or a wrong mirror); it was deleted, nothing is kept"
        )


# --- one process at a time ----------------------------------------------------------------------


@contextlib.contextmanager
def cache_lock(target: Path, name: str) -> Iterator[None]:
    """Hold TARGET.lock while `target` is made: a second process making the same thing waits
    here (saying so), then finds it made."""
    lock_file = target.with_name(target.name + LOCK)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise DdimError(f"cannot use the cache folder {lock_file.parent}: "
                        f"{error.strerror or error}") from None  # fmt: skip
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another process that is making {name}", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- the transfer -------------------------------------------------------------------------------


def _download(source: Source, url: str, part: Path, progress: bool) -> None:
    """Bring `part` to the whole file, continuing what it holds; a dropped connection is
    continued at once, and given up after RETRIES drops in a row that brought no new byte."""
    idle = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        try:
            _transfer(source, url, part, progress)
            return
        except _Dropped as dropped:
            now = part.stat().st_size if part.exists() else 0
            idle = 0 if now > have else idle + 1
            if idle > RETRIES:
                raise DdimError(
                    f"the download of {source.name} from {url} stopped at {now:,} bytes "
                    f"({dropped}); rerun to continue from there"
                ) from None
            print(f"connection dropped ({dropped}); continuing {source.name}", file=sys.stderr)


def _transfer(source: Source, url: str, part: Path, progress: bool) -> None:
    """One request: the rest of the file after what `part` holds (or all of it, where the
    server ignores the Range header), appended as it arrives."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"ddim/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    response = _open(source, url, headers, part)
    if response is None:  # the server says the range is past the end: the .part is whole
        return
    with response:
        start = _start_offset(response, have)
        total = _total_size(response, start)
        _check_size(source, url, total)
        _check_space(part, total - start if total else None)
        mode = "ab" if start else "wb"
        with open(part, mode) as out, progress_bar(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"fetching {source.name}", disable=not progress,
        ) as bar:  # fmt: skip
            received = start
            while True:
                try:
                    block = response.read(CHUNK)
                except (http.client.IncompleteRead, OSError) as error:
                    raise _Dropped(type(error).__name__) from None
                if not block:
                    break
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received < total:
        raise _Dropped(f"{received:,} of {total:,} bytes")


def _open(source: Source, url: str, headers: dict, part: Path):
    """The server's response, or None for 416 (nothing after the bytes held); failures to reach
    it are one line with the way to fetch the file by hand."""
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=TIMEOUT_S)  # fmt: skip
    except urllib.error.HTTPError as error:
        if error.code == 416 and "Range" in headers:
            return None
        why = f"{url} answered HTTP {error.code} {error.reason}"
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        why = f"{url} could not be reached ({_describe(reason)})"
    raise DdimError(manual_route(source, url, part.with_name(part.name[: -len(PART)]), why))


def _describe(reason) -> str:
    """A network failure in a few words."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "the host name does not resolve: offline?"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    return str(getattr(reason, "strerror", None) or reason)


def _start_offset(response, have: int) -> int:
    """Where the body starts in the file: `have` for a 206 that continues there, else 0."""
    if response.status != 206:
        return 0
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != have:
        raise _Dropped("the server answered another range than asked")
    return have


def _total_size(response, start: int) -> int | None:
    """The whole file's size from the response's headers, if it says."""
    length = response.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _check_size(source: Source, url: str, total: int | None) -> None:
    """Refuse early a file of another size than the published one (a page, a wrong file)."""
    if source.size is not None and total is not None and total != source.size:
        raise DdimError(
            f"{url} offers {total:,} bytes, but {source.name} is {source.size:,} bytes: not "
            "the published file (a proxy's page or a wrong mirror); nothing was downloaded"
        )


def _check_space(part: Path, needed: int | None) -> None:
    """Refuse a download the cache's disk cannot hold, before it starts."""
    part.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(part.parent).free
    if needed is not None and needed > free:
        raise DdimError(
            f"fetching into {part.parent} needs {needed / 1e6:,.0f} MB and {free / 1e6:,.0f} MB "
            "are free there: free some space, or move the cache with DDIM_CACHE"
        )
