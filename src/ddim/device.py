"""Where and in what precision the network runs: device choice, torchrun ranks, native bf16.

bf16 autocast pays only where the hardware computes in bf16 natively: CUDA GPUs, and CPUs with
AVX-512 BF16 or AMX-BF16 instructions (`avx512_bf16` / `amx_bf16` in /proc/cpuinfo). Elsewhere
oneDNN emulates bf16 and it is slower than fp32, so the fast path falls back to fp32 there.
`DDIM_CPU_BF16=0` (or `1`) overrides the CPU detection, for tests and for comparing both paths.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.distributed as dist

from ddim.errors import DdimError

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_ENV = "DDIM_CPU_BF16"


@functools.cache
def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is no such file)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX-BF16); `DDIM_CPU_BF16` wins."""
    override = os.environ.get(BF16_ENV)
    if override in ("0", "1"):
        return override == "1"
    flags = _cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast is the fast path on `device`: CUDA, or a CPU with native bf16."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and cpu_has_native_bf16()


def parse_device(name: str | None) -> torch.device | None:
    """A device name as a torch.device (None stays None); a bad name or a missing GPU is a
    DdimError naming it."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DdimError(f"device {name!r} is not a device (cpu, cuda, cuda:1, ...)",
                        argument="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DdimError(f"device {name!r}: no CUDA GPU is available here, only the CPU",
                        argument="device")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise DdimError(
                f"device {name!r}: there are only {torch.cuda.device_count()} CUDA devices",
                argument="device",
            )
    if device.type not in ("cpu", "cuda"):
        raise DdimError(f"device {name!r}: only cpu and cuda are supported", argument="device")
    return device


def resolve_device(
    device: torch.device | None, local_rank: int, cuda_available: bool
) -> torch.device:
    """The device to use: this rank's GPU by default, and "cuda" without an index means it too."""
    if device is None:
        return torch.device("cuda", local_rank) if cuda_available else torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device


def distributed_context(device: torch.device | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; joins the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device, local_rank, torch.cuda.is_available())
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world_size, device
