"""Exclusive locks on folders, so that two processes never write one run or one output at once.

A lock is `fcntl.flock` on a small file in the folder, held while the block runs. The kernel
releases it when its holder exits, however it exits, so the lock file a killed process leaves
behind never blocks the next run. The file holds the holder's process id, for the message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ddim.errors import DdimError

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None


@contextlib.contextmanager
def folder_lock(lock_file: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (created if needed) for the block; if another
    process holds it, raise a DdimError naming `what` and that process."""
    lock_file = Path(lock_file)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as error:
        raise DdimError(f"cannot lock {what}: {error.strerror or error} ({lock_file})") from None
    try:
        _acquire(fd, what)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(fd: int, what: str) -> None:
    """Lock `fd` without waiting and write this process's id into it."""
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        raise DdimError(
            f"{what} is in use by another ddim process (pid {holder}); wait for it to finish, "
            "or write elsewhere"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
