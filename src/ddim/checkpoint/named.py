"""What a checkpoint argument names: a file or folder, a run directory, `bundled`, the paper's
pretrained weights by name, or a Hugging Face hub id, resolved to a local path in that order.

    path that exists      itself; a run directory means its newest checkpoint (by step)
    bundled               the model that ships with the package
    cifar10, ema_cifar10, lsun_{bedroom,cat,church} and their ema_ forms
                          the official DDIM code's `--use_pretrained` names, fetched once into the
                          cache and checked against their MD5 (`ddim.hub`), with the packaged
                          config of the network they hold
    OWNER/NAME            a hub id, through huggingface_hub's cache (`pip install 'ddim[hub]'`)

A local file or folder comes first, so a name never hides a user's own checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ddim.errors import DdimError
from ddim.hub import WEIGHTS, fetch, hub_snapshot, is_hub_id, weights_source

BUNDLED_NAME, BUNDLED = "bundled", "cifar10-32px.safetensors"  # the CPU run's EMA, float16
CHECKPOINT_GLOB = "ckpt-*.safetensors"
_STEP = re.compile(r"ckpt-(\d+)\.safetensors$")


@dataclass(frozen=True)
class Named:
    """A checkpoint argument resolved: the local path, and the name it was given by (if one)
    with the packaged config of that name's network (if known)."""

    path: Path
    name: str | None = None
    config: str | None = None


def resolve_checkpoint(spec: str | Path) -> Named:
    """The local checkpoint `spec` names (see the module's table); fetched if it must be."""
    path = Path(spec)
    if path.exists():
        return Named(newest_checkpoint(path) if is_run_dir(path) else path)
    text = str(spec)
    if text == BUNDLED_NAME:
        return Named(bundled_checkpoint(), BUNDLED_NAME)
    source = weights_source(text)
    if source is not None:
        return Named(fetch(source), text, source.config)
    if is_hub_id(text):
        return Named(hub_snapshot(text), text)
    raise DdimError(
        f"no checkpoint file {text!r}, and no checkpoint of that name: the names are "
        f"{BUNDLED_NAME}, {', '.join(WEIGHTS)} and Hugging Face hub ids such as "
        "google/ddpm-cifar10-32 (`ddim cache list`)"
    )


def bundled_checkpoint() -> Path:
    """The model that ships with the package (used when no checkpoint is named)."""
    path = bundled_path()
    if not path.is_file():
        raise DdimError("ckpt is not given, and this installation has no bundled model",
                        argument="ckpt")
    return path


def bundled_path() -> Path:
    """Where the bundled model is in this installation (whether or not it is there)."""
    return Path(__file__).resolve().parents[1] / "assets" / BUNDLED


# --- run directories ------------------------------------------------------------------------------


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's file name (`ckpt-<step>.safetensors`)."""
    match = _STEP.search(Path(path).name)
    if match is None:
        raise DdimError(f"{path} is not named like a run's checkpoint (ckpt-<step>.safetensors)")
    return int(match.group(1))


def run_checkpoints(run_dir: Path) -> list[Path]:
    """A run directory's checkpoints, by step (the one order for resuming and pruning)."""
    return sorted((Path(run_dir) / "checkpoints").glob(CHECKPOINT_GLOB), key=checkpoint_step)


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a training run's folder (it has a checkpoints/ folder)."""
    return (path / "checkpoints").is_dir()


def newest_checkpoint(run_dir: Path) -> Path:
    """The highest-step checkpoint of a run directory (its checkpoints are written atomically,
    so the newest is whole); a run with none is an error saying so."""
    found = run_checkpoints(run_dir)
    if not found:
        raise DdimError(f"{run_dir} is a run directory without checkpoints yet: train it until "
                        "it writes one, or name a checkpoint file")  # fmt: skip
    return found[-1]
