"""Checkpoints: our self-describing format, the official and diffusers files, and one loader.

    weights   what any checkpoint holds (`Checkpoint`), and the checks all loaders share
    format    our safetensors format (weights + config + training state), atomic and verified
    foreign   the official `ckpt.pth`, plain state_dicts and bare weights (config inferred)
    diffusers the diffusers layout, both ways
    named     what a checkpoint argument names: a path, a run directory, `bundled`, the paper's
              pretrained weights by name, a hub id
    load      `load_checkpoint` (any kind, by its bytes), `load_model`, a checkpoint's hash
"""

from ddim.checkpoint.format import remove_checkpoint, save_checkpoint
from ddim.checkpoint.load import (
    checkpoint_sha256,
    config_for_foreign,
    load_checkpoint,
    load_model,
    model_from_checkpoint,
    provenance,
)
from ddim.checkpoint.named import bundled_checkpoint, resolve_checkpoint
from ddim.checkpoint.weights import Checkpoint

__all__ = [
    "Checkpoint",
    "bundled_checkpoint",
    "checkpoint_sha256",
    "config_for_foreign",
    "load_checkpoint",
    "load_model",
    "model_from_checkpoint",
    "provenance",
    "remove_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]
