"""Checkpoints: safe, self-describing files of U-Net weights, and the loaders for foreign ones.

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
    NAME.train-<sha256[:16]>.pt optional training state (optimiser, RNG and data-order states, as
                                the trainer gives them): `torch.save` of tensors, dicts, lists,
                                tuples, numbers and strings, read back with weights_only=True.

Writes are atomic: each file goes to a temporary file in the same directory, is flushed and
fsync'ed, then `os.replace`d over the target, and the directory is fsync'ed. The training state is
written first, under a name that carries its own hash; the weights file written next names that
file and hash. A crash in between leaves the previous pair intact (and an orphan that the next
save removes); a weights file whose companion is missing or differs is a `DdimError` on load.

`load_checkpoint` recognises a file by its bytes, not its name:
- our safetensors file (the checksum is verified, so damaged or edited tensors are an error);
- a safetensors file of bare weights (official or diffusers key names);
- the official ermongroup/ddim `ckpt.pth`: a torch.save'd list
  [model_state, optimizer_state, epoch, step, ema_state?] with `module.` prefixes (EMA preferred);
- a plain state_dict such as the DDPM weights converted to PyTorch (`model-790000.ckpt`);
- a diffusers folder (`unet/`, `scheduler/`), through `ddim.convert`.
Pickle-based files are opened only with `torch.load(weights_only=True)`: a file that would run
code, or holds anything but tensors and plain containers, is refused. Foreign files record no
config; theirs is inferred from the weights' shapes, taking the image size to be 16 · 2^i where i
is the first level with attention (true of every released DDPM/DDIM model), or given by the caller.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ddim import __version__
from ddim.config import Config, ModelConfig, load_config
from ddim.errors import DdimError
from ddim.unet import UNet

FORMAT = "ddim-checkpoint"
FORMAT_VERSION = 1
MODEL_PREFIX, EMA_PREFIX = "model.", "ema."
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP and torch.compile


@dataclass
class Checkpoint:
    """What a checkpoint file holds, whatever its kind; `config` is None for foreign files."""

    path: Path
    kind: str  # "ddim", "official", "state_dict" or "diffusers"
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None
    model_config: ModelConfig
    image_size: int
    config: Config | None = None
    step: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    train_state_loader: Callable[[], dict | None] = field(default=lambda: None, repr=False)

    def weights(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """The EMA weights if asked for and present, else the raw model weights."""
        return self.ema_state if use_ema and self.ema_state is not None else self.model_state

    def load_train_state(self) -> dict | None:
        """The training state saved beside the weights (checked against its hash), or None."""
        return self.train_state_loader()


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
    """Write `tensors` and their text metadata to `tmp` in the safetensors format."""
    safetensors.torch.save_file(tensors, tmp, metadata=metadata)


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
    atomic_write(train_path, lambda tmp: tmp.write_bytes(data))
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


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` through a temporary file in its directory: fsync, os.replace, fsync the dir.

    An OSError (disk full, no permission) removes the temporary file and becomes a DdimError;
    the previous `path`, if any, is untouched.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise DdimError(f"cannot write {str(path)!r}: {error.strerror or error}") from None
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
            reason = error.strerror or _first_line(error)
            message = f"cannot write {str(path)!r}: {reason}; the previous file is unchanged"
            raise DdimError(message) from None
        raise
    _fsync_directory(path.parent)


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


def _remove_stale(path: Path, keep: str | None) -> None:
    """Remove training-state files of `path` other than `keep`, and temporaries a crash left."""
    stale = [p for p in path.parent.glob(f"{path.stem}.train-*.pt") if p.name != keep]
    stale += list(path.parent.glob(f".{path.stem}.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)


def keep_last(directory: str | Path, pattern: str = "*.safetensors", k: int = 3) -> list[Path]:
    """Delete all but the `k` newest checkpoints matching `pattern` (and their training state)."""
    if k < 0:
        raise DdimError(f"keep_last needs k >= 0, got {k}")
    files = sorted(Path(directory).glob(pattern), key=lambda p: (p.stat().st_mtime_ns, p.name))
    removed = files[: max(len(files) - k, 0)]
    for p in removed:
        p.unlink(missing_ok=True)
        _remove_stale(p, keep=None)
    return removed


# ---------------------------------------------------------------------------------------------
# Reading


def load_checkpoint(path: str | Path, *, config: Config | str | None = None) -> Checkpoint:
    """Read any supported checkpoint kind; `config` (Config or name) replaces the recorded one."""
    path = Path(path)
    if path.is_dir():
        from ddim.convert import load_diffusers_folder  # ddim.convert imports this module

        checkpoint = load_diffusers_folder(path)
    elif not path.is_file():
        raise DdimError(f"no checkpoint file {str(path)!r}")
    elif sniff(path) == "safetensors":
        checkpoint = _load_safetensors(path)
    else:
        checkpoint = _load_pickle(path)
    if config is not None:
        checkpoint = _with_config(checkpoint, config)
    return checkpoint


def sniff(path: Path) -> str:
    """'safetensors' or 'torch' from a file's first bytes; anything else is a DdimError."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save zip / legacy pickle
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        raise DdimError(f"{str(path)!r} is truncated: its safetensors header runs past the end")
    raise DdimError(f"{str(path)!r} is not a checkpoint: neither safetensors nor torch.save")


def _load_safetensors(path: Path) -> Checkpoint:
    """Read a safetensors file: ours (verified against its checksum) or bare weights."""
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            raw_meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as error:
        raise DdimError(f"{str(path)!r} is damaged or truncated: {_first_line(error)}") from None
    if raw_meta.get("format") != json.dumps(FORMAT):
        return _foreign(path, "state_dict", _official_names(tensors), None)
    meta = _decode_meta(path, raw_meta)
    if tensors_sha256(tensors) != meta.get("tensors_sha256"):
        raise DdimError(f"{str(path)!r} is damaged or was modified: its tensors fail the checksum")
    try:
        config = Config.from_dict(meta["config"])
    except DdimError as error:
        raise DdimError(f"{str(path)!r} records a config this version rejects: {error}") from None
    model, ema = _unprefixed(tensors, MODEL_PREFIX), _unprefixed(tensors, EMA_PREFIX)
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
    )


def _unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with `prefix`, with the prefix removed."""
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _decode_meta(path: Path, raw_meta: dict[str, str]) -> dict[str, Any]:
    """JSON-decode our metadata values and check the format version."""
    try:
        meta = {key: json.loads(value) for key, value in raw_meta.items()}
    except json.JSONDecodeError:
        raise DdimError(f"{str(path)!r} has damaged metadata (not JSON)") from None
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


def load_weights_only(path: Path, source: Any = None) -> Any:
    """torch.load with weights_only=True; unsafe or unreadable files become DdimErrors."""
    try:
        return torch.load(source or path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise DdimError(
            f"refusing to load {str(path)!r}: it holds objects other than tensors and plain "
            f"containers, which could run code ({_first_line(error)})"
        ) from None
    except Exception as error:
        raise DdimError(f"{str(path)!r} is damaged or truncated: {_first_line(error)}") from None


def _load_pickle(path: Path) -> Checkpoint:
    """Read an official `ckpt.pth` list or a plain state_dict saved with torch.save."""
    obj = load_weights_only(path)
    if isinstance(obj, (list, tuple)) and len(obj) >= 4 and isinstance(obj[0], dict):
        model = _official_names(obj[0])
        ema = _official_names(obj[4]) if len(obj) >= 5 and isinstance(obj[4], dict) else None
        checkpoint = _foreign(path, "official", model, ema)
        checkpoint.step = obj[3] if isinstance(obj[3], int) else None
        train = {"optimizer": obj[1], "epoch": obj[2], "step": obj[3]}
        checkpoint.train_state_loader = lambda: train
        return checkpoint
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _foreign(path, "state_dict", _official_names(obj), None)
    raise DdimError(f"{str(path)!r} holds no U-Net weights (neither a state_dict nor a ckpt.pth)")


def _official_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights under the official key names: wrapper prefixes dropped, diffusers names mapped."""
    state = strip_wrapper_prefixes(state)
    if any(key.startswith("down_blocks.") for key in state):
        from ddim.convert import from_diffusers_state

        state = from_diffusers_state(state)
    return state


def _foreign(path: Path, kind: str, model: dict, ema: dict | None) -> Checkpoint:
    """A checkpoint without a recorded config: the architecture is inferred from the weights."""
    model_config, image_size = infer_model_config(model, source=str(path))
    check_weights_fit(model, model_config, image_size, str(path))
    if ema is not None:
        check_weights_fit(ema, model_config, image_size, f"{path} (EMA weights)")
    return Checkpoint(path, kind, model, ema, model_config, image_size)


def _with_config(checkpoint: Checkpoint, config: Config | str) -> Checkpoint:
    """The same weights under a config the caller chose; the weights must fit its model."""
    if not isinstance(config, Config):
        config = load_config(config)
    for what, state in (("weights", checkpoint.model_state), ("EMA weights", checkpoint.ema_state)):
        if state is not None:
            check_weights_fit(
                state, config.model, config.data.image_size, f"the {what} in {checkpoint.path}"
            )
    checkpoint.config = config
    checkpoint.model_config, checkpoint.image_size = config.model, config.data.image_size
    return checkpoint


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop `module.` (DataParallel) and `_orig_mod.` (torch.compile) from every key."""
    out = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def infer_model_config(state: dict, source: str = "weights") -> tuple[ModelConfig, int]:
    """The ModelConfig and image size that official-named U-Net weights were made for."""
    try:
        ch, in_channels = state["conv_in.weight"].shape[:2]
        levels = sorted({int(k.split(".")[1]) for k in state if k.startswith("down.")})
        ch_mult = tuple(state[f"down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
        num_res_blocks = len({k.split(".")[3] for k in state if k.startswith("down.0.block.")})
        out_ch = int(state["conv_out.weight"].shape[0])
    except (KeyError, ValueError, IndexError) as error:
        raise DdimError(f"{source} does not hold DDPM U-Net weights (no {error})") from None
    attn_levels = [i for i in levels if f"down.{i}.attn.0.q.weight" in state]
    if not attn_levels:
        raise DdimError(f"cannot infer the image size of {source} (no attention): give a config")
    image_size = 16 * 2 ** attn_levels[0]
    model = ModelConfig(
        in_channels=int(in_channels),
        out_ch=out_ch,
        ch=int(ch),
        ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
        attn_resolutions=tuple(image_size // 2**i for i in attn_levels),
        dropout=0.0,
        resamp_with_conv=len(levels) == 1 or "down.0.downsample.conv.weight" in state,
    )
    return model, image_size


def check_weights_fit(state: dict, model: ModelConfig, image_size: int, source: str) -> None:
    """Raise a DdimError unless `state` has exactly the U-Net's keys and shapes."""
    with torch.device("meta"):
        net = UNet.from_config(model, image_size)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = {
        "missing": sorted(expected.keys() - state.keys()),
        "unexpected": sorted(state.keys() - expected.keys()),
        "wrong shape": sorted(
            k for k in expected.keys() & state.keys() if tuple(state[k].shape) != expected[k]
        ),
    }
    problems = [
        f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        for label, keys in found.items()
        if keys
    ]
    if problems:
        raise DdimError(f"{source} does not fit the U-Net config: {'; '.join(problems)}")


def model_from_checkpoint(
    checkpoint: Checkpoint, *, use_ema: bool = True, device: str | torch.device = "cpu"
) -> UNet:
    """The U-Net holding a checkpoint's weights (EMA if asked and present), in eval mode."""
    with torch.device("meta"):
        net = UNet.from_config(checkpoint.model_config, checkpoint.image_size)
    net.load_state_dict(checkpoint.weights(use_ema), strict=True, assign=True)
    return net.to(device=device, dtype=torch.float32).eval()  # fp16-stored weights compute in fp32


def load_model(
    path: str | Path,
    *,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
    config: Config | str | None = None,
) -> tuple[UNet, Config | None]:
    """The U-Net of any checkpoint kind, in eval mode on `device`, and its Config (or None)."""
    checkpoint = load_checkpoint(path, config=config)
    return model_from_checkpoint(checkpoint, use_ema=use_ema, device=device), checkpoint.config


def _first_line(error: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
