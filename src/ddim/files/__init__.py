"""Files: written so that a crash never leaves a half-written one, held by one process at a time,
and outputs that hold the results of one recorded setting.

    atomic   `atomic_write` (temporary file, fsync, rename), stale temporaries, file hashes
    lock     `folder_lock`: an exclusive lock on a folder that a killed process never leaves held
    outputs  `claim_output`: an output folder or file and the record of the settings that made it
    npz      reading `.npz` files from outside: shapes checked before anything is allocated
"""

from ddim.files.atomic import (
    TMP_SUFFIX,
    atomic_write,
    cached_file_sha256,
    file_sha256,
    git_commit,
    path_sha256,
    remove_stale_temporaries,
    write_bytes,
    write_text,
)
from ddim.files.lock import folder_lock
from ddim.files.npz import check_fits_in_memory, load_npz_arrays, memory_bytes, npz_headers
from ddim.files.outputs import Output, claim_output, file_output, folder_output, read_record

__all__ = [
    "TMP_SUFFIX",
    "Output",
    "atomic_write",
    "cached_file_sha256",
    "check_fits_in_memory",
    "claim_output",
    "file_output",
    "file_sha256",
    "folder_lock",
    "folder_output",
    "git_commit",
    "load_npz_arrays",
    "memory_bytes",
    "npz_headers",
    "path_sha256",
    "read_record",
    "remove_stale_temporaries",
    "write_bytes",
    "write_text",
]
