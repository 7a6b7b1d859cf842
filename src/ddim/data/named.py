"""Datasets by name: `cifar10` is the official CIFAR-10 python archive, fetched once into the cache
(checked against its published MD5, `ddim.hub`) and unpacked once beside it.

The archive's batches are taken out one by one: only the regular files of its
`cifar-10-batches-py/` folder that CIFAR-10 has, each read up to what such a batch can hold
whatever the archive's header claims, into a temporary folder renamed into place when all are
out. So the unpacked folder exists only whole, and a kill halfway leaves nothing that looks done.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from ddim.errors import DdimError
from ddim.hub import cache_lock, cache_root, data_source, fetch

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_SPLITS = {"train": tuple(f"data_batch_{k}" for k in range(1, 6)), "test": ("test_batch",)}
_CIFAR_FILES = (*CIFAR_SPLITS["train"], *CIFAR_SPLITS["test"], "batches.meta")
MAX_BATCH_BYTES = 64 << 20  # a batch of 10,000 images pickled is 31 MB


def is_dataset_name(name: str) -> bool:
    """Whether `name` names a dataset that can be fetched (see `ddim.hub.DATA`)."""
    return data_source(name) is not None


def named_dataset_folder(name: str, *, progress: bool = True) -> Path:
    """The unpacked `cifar-10-batches-py` folder of the dataset `name`, fetched and unpacked
    into the cache the first time (afterwards read with no network call)."""
    source = data_source(name)
    if source is None:
        raise DdimError(f"no dataset named {name!r}", argument="data")
    unpacked = cache_root() / "data" / name
    if (unpacked / CIFAR_FOLDER).is_dir():
        return unpacked / CIFAR_FOLDER
    archive = fetch(source, progress=progress)
    with cache_lock(unpacked, name):
        if not (unpacked / CIFAR_FOLDER).is_dir():  # another process may have unpacked it
            _unpack_cifar(archive, unpacked)
    return unpacked / CIFAR_FOLDER


def _unpack_cifar(archive: Path, unpacked: Path) -> None:
    """Take CIFAR-10's batch files out of `archive` into `unpacked/cifar-10-batches-py`."""
    shutil.rmtree(unpacked, ignore_errors=True)  # a folder without the batches is no result
    temporary = Path(tempfile.mkdtemp(dir=unpacked.parent, prefix=f".{unpacked.name}.",
                                      suffix=".tmp"))  # fmt: skip
    try:
        folder = temporary / CIFAR_FOLDER
        folder.mkdir()
        found = _extract_batches(archive, folder)
        missing = [name for name in _CIFAR_FILES if name not in found]
        if missing:
            raise DdimError(f"{archive} holds no {CIFAR_FOLDER}/{missing[0]}: not the CIFAR-10 "
                            "python archive; delete it and fetch again")  # fmt: skip
        os.replace(temporary, unpacked)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _extract_batches(archive: Path, folder: Path) -> set[str]:
    """Write the CIFAR-10 files of a .tar.gz into `folder`; the names written."""
    found = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                base = name.removeprefix(f"{CIFAR_FOLDER}/")
                if base == name or base not in _CIFAR_FILES or not member.isreg():
                    continue
                data = tar.extractfile(member).read(MAX_BATCH_BYTES + 1)
                if len(data) > MAX_BATCH_BYTES:
                    raise DdimError(f"{archive}: {name} is larger than a CIFAR-10 batch can be")
                (folder / base).write_bytes(data)
                found.add(base)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DdimError(f"cannot unpack {archive}: {error}; delete it and fetch again") from None
    return found
