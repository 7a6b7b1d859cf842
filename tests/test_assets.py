"""The bundled weights (src/ddim/assets): metadata that names its data and parent weights by name
and SHA-256, never by a machine's path; tensors that match their checksum; a file that loads."""

import json
import re

import safetensors
import safetensors.torch

from ddim import load_checkpoint
from ddim.checkpoint import bundled_checkpoint
from ddim.checkpoint.format import tensors_sha256

DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
# built from parts, so that this file holds none of the strings the path scan looks for
MACHINE_PARTS = (*(f"/{name}/" for name in ("work", "root", "home")), "../" + "shared")


def raw_metadata() -> dict:
    """The bundled file's metadata, each value JSON-decoded."""
    with safetensors.safe_open(bundled_checkpoint(), framework="pt", device="cpu") as f:
        return {key: json.loads(value) for key, value in f.metadata().items()}


def strings(value, where: str = ""):
    """(where, text) for every string in a JSON value: dict keys and values, list items."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key, f"{where}.{key} (key)")
            yield from strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for k, item in enumerate(value):
            yield from strings(item, f"{where}[{k}]")


def is_machine_path(text: str) -> bool:
    """An absolute path (POSIX or a Windows drive), or one naming a build machine's folders."""
    return text.startswith(("/", "\\")) or bool(DRIVE.match(text)) or any(
        part in text for part in MACHINE_PARTS
    )


def test_the_path_rule_flags_machine_paths_and_only_them():
    for text in ("/data/x.zip", "C:\\runs\\a.safetensors", "d:/x", "x/../" + "shared/y",
                 "runs" + "/ro" + "ot/a"):
        assert is_machine_path(text), text
    for text in ("bundled (earlier release)", "train", "CIFAR10", "cifar10-32px.safetensors",
                 "post-hoc EMA (10 kimg) of the CPU continuation", "ema"):
        assert not is_machine_path(text), text


def test_the_bundled_metadata_names_no_path():
    meta = raw_metadata()
    found = [(where, text) for where, text in strings(meta) if is_machine_path(text)]
    assert found == []
    assert meta["data"]["path"] is None and meta["config"]["data"]["path"] is None
    source = meta["extra"]["data_source"]
    assert source["subdir"] == meta["data"]["subdir"] == "train"
    assert re.fullmatch(r"[0-9a-f]{64}", source["sha256"]) and "CIFAR-10" in source["name"]
    assert re.fullmatch(r"[0-9a-f]{64}", meta["extra"]["init"]["sha256"])


def test_the_bundled_tensors_match_their_recorded_checksum_and_the_file_loads():
    path = bundled_checkpoint()
    tensors = safetensors.torch.load_file(path)
    assert tensors_sha256(tensors) == raw_metadata()["tensors_sha256"]
    checkpoint = load_checkpoint(path)  # checks both checksums and the weights' fit
    assert checkpoint.kind == "ddim" and checkpoint.config.data.path is None
    assert checkpoint.weights_label() == "ema" and checkpoint.meta["extra"]["float16"]
