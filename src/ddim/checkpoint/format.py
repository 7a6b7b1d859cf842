"""Our checkpoint format: safe, self-describing safetensors files of U-Net weights and config.

Our format is a pair of files, written so that a crash at any instant leaves a loadable pair:

    NAME.safetensors            tensors `model.<key>` and `ema.<key>` (official U-Net key names);
                                its safetensors metadata (str -> str, each value JSON text) holds
        format, format_version  "ddim-checkpoint", 1
        config                  the full `Config.to_dict()`: everything needed to sample
        schedule, data          the `diffusion` and `data` sections again, for readers of metadata
        step                    the training step
        git_commit              the library's git commit, or null
        ddim_version            `ddim.__version__`
        train_state             {"file", "sha256", "step"} of the companion file, or null
        extra                   the caller's `extra_meta` (JSON values)
        tensors_sha256          SHA-256 over every tensor's name, dtype, shape and bytes
        metadata_sha256         SHA-256 over every other metadata value (`metadata_sha256`), so
                                an edited config, step or tensor checksum is found on load
    NAME.train-<sha256[:16]>.pt optional training state (optimiser, RNG and data-order states, as
                                the trainer gives them): `torch.save` of tensors, dicts, lists,
                                tuples, numbers and strings, read back with weights_only=True.

Writes are atomic: each file goes to a temporary file in the same directory, is flushed and
fsync'ed, then `os.replace`d over the target, and the directory is fsync'ed.

What is read is checked before it is used (`from_ours`): the tensors against their checksum, the
metadata against its own (files written before it existed: the config's `diffusion` and `data`
sections against their copies in `schedule` and `data`), the weights against the U-Net the
config describes (its counts against the weights' names first, so a forged config builds
nothing: `ddim.checkpoint.weights.check_config_counts`), and every weight for being finite.
The training state is written first, under a name that carries its own hash; the weights file
written next names that file and hash. A crash in between leaves the previous pair intact (and
an orphan that the next save removes); a weights file whose companion is missing or differs is a
`DdimError` on load.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ddim.checkpoint.weights import (
    Checkpoint,
    check_weights_fit,
    first_line,
    load_weights_only,
    strip_wrapper_prefixes,
)
from ddim.config import Config, from_official_dict
from ddim.errors import DdimError
from ddim.files import TMP_SUFFIX, atomic_write, git_commit, write_bytes
from ddim.version import __version__

FORMAT = "ddim-checkpoint"
FORMAT_VERSION = 1
MODEL_PREFIX, EMA_PREFIX = "model.", "ema."

# ---------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(
    path: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None = None,
    config: Config,
    step: int,
    train_state: dict | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Atomically write weights + config (+ training state beside them); return the weights path."""
    path = Path(path)
    try:
        extra = json.loads(json.dumps(extra_meta or {}))
    except (TypeError, ValueError) as error:
        raise DdimError(f"extra_meta must hold JSON values: {error}") from None
    tensors = _prefixed(MODEL_PREFIX, model_state, config, "model_state")
    if ema_state is not None:
        tensors |= _prefixed(EMA_PREFIX, ema_state, config, "ema_state")
    train_ref = None if train_state is None else _save_train_state(path, train_state, step)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "schedule": config.to_dict()["diffusion"],
        "data": config.to_dict()["data"],
        "step": int(step),
        "git_commit": git_commit(),
        "ddim_version": __version__,
        "train_state": train_ref,
        "extra": extra,
        "tensors_sha256": tensors_sha256(tensors),
    }
    meta["metadata_sha256"] = metadata_sha256(meta)
    text_meta = {key: json.dumps(value) for key, value in meta.items()}
    try:
        atomic_write(path, lambda tmp: _save_tensors(tmp, tensors, text_meta))
    except DdimError:  # e.g. the disk filled up: drop the companion that nothing names yet
        if train_ref is not None and not _names_train_file(path, train_ref["file"]):
            path.with_name(train_ref["file"]).unlink(missing_ok=True)
        raise
    _remove_stale(path, keep=None if train_ref is None else train_ref["file"])
    return path


def _save_tensors(tmp: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write `tensors` and their text metadata to `tmp` in the safetensors format, the metadata
    in sorted order (`sort_safetensors_metadata`): the same inputs make the same bytes."""
    safetensors.torch.save_file(tensors, tmp, metadata=metadata)
    sort_safetensors_metadata(tmp)


def sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors file's header in place with its metadata keys sorted: the library
    writes them in the order of a hash map seeded afresh on each call, so the same tensors and
    metadata would make other bytes each time (and another SHA-256, which records compare).
    The header keeps its length (the same keys and values; spaces pad it, as the format
    allows), so the tensors after it are not moved."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        metadata = header.pop("__metadata__", None)
        if metadata is None:
            return
        ordered = {"__metadata__": dict(sorted(metadata.items())), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            raise DdimError(f"cannot order the metadata of {str(path)!r}: its header grew")
        f.seek(8)
        f.write(text.ljust(size, b" "))


def _names_train_file(path: Path, name: str) -> bool:
    """Whether an existing weights file at `path` refers to the training-state file `name`."""
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            ref = json.loads((f.metadata() or {}).get("train_state", "null"))
    except Exception:
        return False
    return isinstance(ref, dict) and ref.get("file") == name


def _prefixed(prefix: str, state: dict[str, torch.Tensor], config: Config, what: str) -> dict:
    """CPU, contiguous copies of a state_dict's tensors under `prefix`, checked against `config`."""
    state = strip_wrapper_prefixes(state)
    check_weights_fit(state, config.model, config.data.image_size, what)
    return {prefix + k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _save_train_state(path: Path, train_state: dict, step: int) -> dict[str, Any]:
    """Write the training state beside `path` under a hash-named file; return its reference."""
    _check_plain(train_state, "train_state")
    buffer = io.BytesIO()
    torch.save(train_state, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    train_path = path.with_name(f"{path.stem}.train-{digest[:16]}.pt")
    write_bytes(train_path, data)
    return {"file": train_path.name, "sha256": digest, "step": int(step)}


_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(obj: Any, where: str) -> None:
    """Refuse anything `torch.load(weights_only=True)` could not read back, naming where it is."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise DdimError(f"{where} has a key of type {type(key).__name__}: use str or int")
            _check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise DdimError(
            f"{where} is a {type(obj).__module__}.{type(obj).__name__}; training state may hold "
            "only tensors, numbers, strings, None, lists, tuples and dicts"
        )


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and raw bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def metadata_sha256(meta: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of every metadata value but `metadata_sha256` itself."""
    body = {key: value for key, value in meta.items() if key != "metadata_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _remove_stale(path: Path, keep: str | None) -> None:
    """Remove training-state files of `path` other than `keep`, and temporaries a crash left."""
    stale = [p for p in path.parent.glob(f"{path.stem}.train-*.pt") if p.name != keep]
    stale += list(path.parent.glob(f".{path.stem}.*{TMP_SUFFIX}"))
    for p in stale:
        p.unlink(missing_ok=True)


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint and the training-state file beside it."""
    path = Path(path)
    path.unlink(missing_ok=True)
    _remove_stale(path, keep=None)


# ---------------------------------------------------------------------------------------------
# Reading


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the text metadata of a safetensors file; a damaged file is a DdimError."""
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            raw_meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as error:
        raise DdimError(f"{str(path)!r} is damaged or truncated: {first_line(error)}") from None
    return tensors, raw_meta


def is_ours(raw_meta: dict[str, str]) -> bool:
    """Whether safetensors metadata marks the file as our format."""
    return raw_meta.get("format") == json.dumps(FORMAT)


def from_ours(path: Path, tensors: dict[str, torch.Tensor], raw_meta: dict[str, str]) -> Checkpoint:
    """A Checkpoint from our file's tensors and metadata, verified against its checksum."""
    meta = _decode_meta(path, raw_meta)
    if tensors_sha256(tensors) != meta.get("tensors_sha256"):
        raise DdimError(f"{str(path)!r} is damaged or was modified: its tensors fail the checksum")
    _check_metadata(path, meta)
    try:
        config = from_official_dict(meta["config"])  # keys no longer used are dropped
    except DdimError as error:
        raise DdimError(f"{str(path)!r} records a config this version rejects: {error}") from None
    model, ema = _unprefixed(tensors, MODEL_PREFIX), _unprefixed(tensors, EMA_PREFIX)
    for what, state in (("weights", model), ("EMA weights", ema)):
        if state:
            check_weights_fit(state, config.model, config.data.image_size,
                              f"the {what} in {str(path)!r} (its recorded config)")
    return Checkpoint(
        path=path,
        kind="ddim",
        model_state=model,
        ema_state=ema or None,
        model_config=config.model,
        image_size=config.data.image_size,
        config=config,
        step=meta["step"],
        meta=meta,
        train_state_loader=lambda: _load_train_state(path, meta.get("train_state")),
        model_weights="raw" if ema else _single_weights(meta),
    )


def _single_weights(meta: dict[str, Any]) -> str:
    """What the one set of weights in our file is: an export records "ema" or "raw" in
    `extra.weights`; a training run without EMA (or a caller's `model_state`) is raw."""
    extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
    return extra.get("weights") if extra.get("weights") in ("ema", "raw") else "raw"


def _unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with `prefix`, with the prefix removed."""
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _decode_meta(path: Path, raw_meta: dict[str, str]) -> dict[str, Any]:
    """JSON-decode our metadata values and check the format version."""
    try:
        meta = {key: json.loads(value) for key, value in raw_meta.items()}
    except ValueError as error:  # not JSON, or an integer of more digits than Python converts
        raise DdimError(f"{str(path)!r} has damaged metadata: {first_line(error)}") from None
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DdimError(
            f"{str(path)!r} has checkpoint format version {version!r}; this ddim {__version__} "
            f"reads up to {FORMAT_VERSION}: upgrade ddim"
        )
    missing = {"config", "step", "tensors_sha256"} - meta.keys()
    if missing:
        raise DdimError(f"{str(path)!r} has damaged metadata: no {', '.join(sorted(missing))}")
    return meta


def _check_metadata(path: Path, meta: dict[str, Any]) -> None:
    """The metadata is as written: its checksum holds (older files: its copies agree)."""
    edited = f"{str(path)!r} is damaged or was modified: its metadata"
    if "metadata_sha256" in meta:
        if metadata_sha256(meta) != meta["metadata_sha256"]:
            raise DdimError(f"{edited} fails the checksum (an edited config, step or hash?)")
        return
    config = meta["config"] if isinstance(meta["config"], dict) else {}
    for key, section in (("schedule", "diffusion"), ("data", "data")):
        if key in meta and meta[key] != config.get(section):
            raise DdimError(f"{edited} disagrees with itself: {key} differs from config.{section}")
    if not isinstance(meta["step"], int) or meta["step"] < 0:
        raise DdimError(f"{edited} records step {meta['step']!r}")


def _load_train_state(path: Path, ref: dict[str, Any] | None) -> dict | None:
    """Read the companion training-state file named in the metadata, after checking its hash."""
    if ref is None:
        return None
    train_path = path.with_name(ref["file"])
    if not train_path.is_file():
        raise DdimError(f"the training state {str(train_path)!r} that {path.name} names is missing")
    data = train_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise DdimError(
            f"the training state {str(train_path)!r} does not match {path.name} (sha256 differs)"
        )
    return load_weights_only(train_path, io.BytesIO(data))
