"""Reading `.npz` files from outside without trusting them: every array's header is read first,
and one that declares more data than its member holds, an object (pickled) array, or more data
than this machine's memory is a DdimError naming the file, before anything is allocated."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from ddim.errors import DdimError

Header = tuple[tuple[int, ...], np.dtype]


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes, or None where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Raise a DdimError if `what` needs more bytes than this machine's memory."""
    total = memory_bytes()
    if total is not None and nbytes > total:
        raise DdimError(
            f"{what} needs {nbytes / 2**30:.3g} GiB of memory, more than this machine's "
            f"{total / 2**30:.3g} GiB"
        )


def npz_headers(path: str | os.PathLike) -> dict[str, Header]:
    """Shape and dtype of every array in an .npz, from the headers alone, each checked."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            return {
                info.filename.removesuffix(".npy"): _member_header(archive, info, path)
                for info in archive.infolist()
                if info.filename.endswith(".npy")
            }
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as error:
        if isinstance(error, DdimError):
            raise
        raise DdimError(f"cannot read {str(path)!r} as an .npz: {_first_line(error)}") from None


def _member_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> Header:
    """One member's (shape, dtype); its declared size must match the bytes it holds."""
    name = f"{path}[{info.filename.removesuffix('.npy')}]"
    if info.flag_bits & 0x1:
        raise DdimError(f"{name} is encrypted")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        header_end = member.tell()
    if dtype.hasobject:
        raise DdimError(f"{name} holds Python objects (a pickle); refusing to load it")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != info.file_size - header_end:
        raise DdimError(
            f"{name} declares shape {shape} of {dtype} ({nbytes} bytes) but holds "
            f"{info.file_size - header_end} bytes: the file is damaged or forged"
        )
    check_fits_in_memory(nbytes, f"{name} of shape {shape}")
    return shape, dtype


def load_npz_arrays(path: str | os.PathLike, keys: list[str] | None = None) -> dict:
    """The arrays `keys` (default: all) of an .npz, after `npz_headers` has checked them."""
    headers = npz_headers(path)
    keys = list(headers) if keys is None else keys
    missing = [key for key in keys if key not in headers]
    if missing:
        raise DdimError(
            f"{str(path)!r} has no array {missing[0]!r} (it has {', '.join(headers) or 'none'})"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DdimError(f"cannot read {str(path)!r} as an .npz: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    """An exception's first line, or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
