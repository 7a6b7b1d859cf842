"""Where reference statistics come from: a dataset's images made into a stats file once (the `ref`
step, as in EDM), references by name made into the cache, and the command that remakes a file.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import torch

from ddim.data import open_dataset
from ddim.evaluation import stats_file
from ddim.evaluation.inception import Images
from ddim.evaluation.stats_file import FidStats
from ddim.hub import cache_lock, cache_root, data_source

# name -> (dataset name, split): the references `--ref` takes by name, made once into the cache
REFERENCES = {"cifar10-train": ("cifar10", "train"), "cifar10-test": ("cifar10", "test")}
# the source `ddim fid ref` records: "PATH [SUBDIR]: [N evenly spread of ]M images, 3xRxR uint8"
_SOURCE = re.compile(r"(.+?)(?: \[(.+)\])?: (?:(\d+) evenly spread of )?\d+ images")


def compute_reference(
    images: Images,
    out_path: str | os.PathLike,
    *,
    source: str,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
    resolution: int | None = None,
) -> FidStats:
    """`ref` step: statistics of a dataset's uint8 images, saved to `out_path` (.npz), returned."""
    stats = stats_file.stats_from_images(
        images, source=source, device=device, batch_size=batch_size, workers=workers,
        progress=progress, resolution=resolution,
    )
    stats_file.save_stats(stats, out_path)
    return stats


# --- references by name ------------------------------------------------------------------------


def reference_file(
    ref: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
) -> Path:
    """The stats file `ref` names: a file as given, or a reference by name (`REFERENCES`) from
    the cache, made the first time from its dataset (fetched by name too), its source and the
    archive's checksum recorded in the file. A file of that name, where there is one, comes
    first."""
    if Path(ref).exists() or str(ref) not in REFERENCES:
        return Path(ref)
    target = cache_root() / "fid-refs" / f"{ref}.npz"
    with cache_lock(target, str(ref)):  # two processes asking at once compute it once
        if not target.is_file():
            _make_named_reference(str(ref), target, device, batch_size, progress)
    return target


def _make_named_reference(name: str, target: Path, device, batch_size: int, progress: bool):
    """Compute the named reference `name` into `target` (all the images of its split)."""
    dataset_name, split = REFERENCES[name]
    dataset = open_dataset(dataset_name, subdir=split, progress=progress)
    archive = data_source(dataset_name)
    c, r = dataset.channels, dataset.resolution
    source = (f"{dataset.source}: {len(dataset)} images, {c}x{r}x{r} uint8 (from {archive.url}, "
              f"MD5 {archive.md5})")  # fmt: skip
    if progress:
        print(f"computing the reference statistics {name} once: {source}", file=sys.stderr)
    images = dataset.as_array()
    compute_reference(
        dataset if images is None else images, target, source=source, device=device,
        batch_size=batch_size, progress=progress, resolution=r,
    )  # fmt: skip


# --- the command that remakes one --------------------------------------------------------------


def missing_features(stats: FidStats, path: str | os.PathLike) -> str:
    """The one-line message for a stats file without KID's features, with the command that
    rebuilds it (`ref_command`)."""
    return (f"{path} holds no Inception features (made before KID), so no KID; rebuild it with "
            f"`{ref_command(path, stats)}`")


def ref_command(path: str | os.PathLike, stats: FidStats) -> str:
    """The `ddim fid ref` command that remakes the stats file `path`: from the settings record
    `ddim fid ref` left beside it, else from the source the file names (DATA if none)."""
    record = Path(f"{path}.settings.json")
    args = None
    try:
        settings = json.loads(record.read_text(encoding="utf-8"))["settings"]
        images = settings["images"]
        args = [images["path"]] + (["--subdir", images["subdir"]] if images["subdir"] else [])
        if images.get("crop") is not None:  # resized on load
            args += ["--resolution", str(images["resolution"])]
        if settings.get("n") is not None:
            args += ["--n", str(settings["n"])]
    except (OSError, ValueError, KeyError, TypeError):
        match = _SOURCE.match(stats.source)
        if match:
            args = [match[1]] + (["--subdir", match[2]] if match[2] else [])
            args += ["--n", match[3]] if match[3] else []
    data = shlex.join(args) if args else "DATA"
    return f"ddim fid ref {data} -o {shlex.quote(str(path))}"
