"""Hugging Face hub ids (`google/ddpm-cifar10-32`): fetched by `huggingface_hub` into its own
cache, under its own settings (HF_HOME, HF_HUB_OFFLINE, HF_ENDPOINT, tokens), as its users know
them. Needs the optional extra: pip install 'ddim[hub]'.
"""

from __future__ import annotations

import re
from pathlib import Path

from ddim.errors import DdimError
from ddim.hub.cache import is_offline

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# What a diffusers U-Net repository holds that sampling reads (not ONNX, Flax or other copies).
FILES = ["*.json", "*.safetensors", "*.bin"]


def is_hub_id(text: str) -> bool:
    """Whether `text` is spelled like a hub id, OWNER/NAME."""
    return HUB_ID.fullmatch(text) is not None


def hub_snapshot(repo_id: str) -> Path:
    """The local folder of hub repository `repo_id` (fetched unless cached; with DDIM_OFFLINE or
    HF_HUB_OFFLINE, only the cache is read)."""
    try:
        import huggingface_hub
    except ImportError:
        raise DdimError(
            f"{repo_id!r} is not a file here, and hub ids need huggingface_hub: "
            "pip install 'ddim[hub]'"
        ) from None
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, allow_patterns=FILES, local_files_only=is_offline()
        )
    except Exception as error:  # huggingface_hub's errors share no base class but Exception
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DdimError(
            f"cannot get {repo_id!r} from the Hugging Face hub ({type(error).__name__}: {first}); "
            "offline, a hub id works once it is in huggingface_hub's cache (HF_HUB_OFFLINE=1 "
            "reads only the cache)"
        ) from None
    return Path(folder)
