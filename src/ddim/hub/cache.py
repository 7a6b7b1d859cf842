"""Where named sources live on this machine, where they are fetched from, and whether the network
may be used: three settings read from the environment, each in one function.

    DDIM_CACHE     the cache folder (default: $XDG_CACHE_HOME/ddim, else ~/.cache/ddim)
    DDIM_MIRROR    a base URL serving every source under its file name (BASE/FILENAME), or a
                   file of lines "FILENAME URL" for some sources (the rest from their origin)
    DDIM_OFFLINE   1/true/yes: never use the network; a name not cached is an error that says
                   where to put the file fetched by hand

The cache holds `weights/FILENAME`, `data/FILENAME` (and what is unpacked from it), `fid-refs/`
and `decoded/` (training images decoded once). A file is there only once its checksum has
passed: a download in progress is `FILENAME.part`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ddim.errors import DdimError
from ddim.hub.sources import Source

CACHE_ENV, MIRROR_ENV, OFFLINE_ENV = "DDIM_CACHE", "DDIM_MIRROR", "DDIM_OFFLINE"
_TRUE = ("1", "true", "yes", "on")


def cache_root() -> Path:
    """The cache folder: $DDIM_CACHE, else $XDG_CACHE_HOME/ddim, else ~/.cache/ddim."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ddim"


def cached_file(source: Source) -> Path:
    """Where `source` is kept in the cache (whether or not it is there yet)."""
    return cache_root() / ("weights" if source.kind == "weights" else "data") / source.filename


def is_offline() -> bool:
    """Whether DDIM_OFFLINE forbids the network."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def source_url(source: Source) -> str:
    """The URL to fetch `source` from: the mirror's where DDIM_MIRROR gives one, else its own."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return source.url
    if "://" in mirror:
        return f"{mirror.rstrip('/')}/{source.filename}"
    return _mirror_file(Path(mirror).expanduser()).get(source.filename, source.url)


def _mirror_file(path: Path) -> dict[str, str]:
    """The "FILENAME URL" lines of a mirror file (blank lines and # comments skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DdimError(
            f"{MIRROR_ENV}={str(path)!r} is neither a URL (http://…, https://…) nor a readable "
            f"file of 'FILENAME URL' lines: {getattr(error, 'strerror', None) or error}"
        ) from None
    urls = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2 or "://" not in words[1]:
            raise DdimError(
                f"{MIRROR_ENV} file {str(path)!r}, line {number}: expected 'FILENAME URL', "
                f"got {line.strip()!r}"
            )
        urls[words[0]] = words[1]
    return urls
