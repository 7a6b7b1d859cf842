"""Put a GPU run's returned files back together and check them, on any machine, from the
repository's root:

    python -m lab.gpu.unpack FILES_DIR OUT

FILES_DIR holds what lab/gpu/run.py left in its OUT_DIR (parts, records.tar.gz,
manifest.json). Every original is joined from its parts into OUT after each part's and the
whole file's SHA-256 are checked against the manifest; records.tar.gz is unpacked into
OUT/records; the weights must load with `ddim.checkpoint.load_checkpoint` (and build their
network), and each samples .npz must hold the uint8 images its name counts. Exit 0 when
everything checks, 1 otherwise (each problem is printed).
"""

from __future__ import annotations

import argparse
import re
import sys
import tarfile
from pathlib import Path

from lab.gpu import handback


def check_weights(path: Path) -> str:
    """The weights load and build their network; a line describing them."""
    from ddim.checkpoint import load_checkpoint, model_from_checkpoint

    checkpoint = load_checkpoint(path)
    net = model_from_checkpoint(checkpoint)
    parameters = sum(p.numel() for p in net.parameters())
    seen = checkpoint.images_seen
    return (f"{checkpoint.kind} checkpoint, ch {checkpoint.model_config.ch}, {parameters:,} "
            f"parameters, step {checkpoint.step}" + (f", {seen:,} images seen" if seen else ""))


def check_samples(path: Path) -> str:
    """The .npz holds uint8 NHWC images, as many as its name's `-nN` says; a line about them."""
    import numpy as np

    with np.load(path) as data:
        images = data["arr_0"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path.name}: not uint8 NHWC RGB images ({images.dtype}, {images.shape})")
    count = re.search(r"-n(\d+)\.npz$", path.name)
    if count and int(count.group(1)) != len(images):
        raise ValueError(f"{path.name}: {len(images)} images, its name says {count.group(1)}")
    return f"{len(images):,} images {images.shape[1]}x{images.shape[2]}"


def unpack(files: Path, out: Path) -> list[str]:
    """Join, check and unpack everything the manifest names; return the problems found."""
    manifest = handback.read_manifest(files)
    out.mkdir(parents=True, exist_ok=True)
    problems = []
    for entry in manifest["files"]:
        target = out / handback.check_name(entry["name"])
        try:
            handback.join_parts(files, entry, target)
            kind = entry.get("kind")
            if kind == "records":
                with tarfile.open(target) as archive:
                    archive.extractall(out, **_safe())
                line = f"unpacked into {out / 'records'}"
            elif kind == "weights":
                line = check_weights(target)
            elif kind == "samples":
                line = check_samples(target)
            else:
                line = "joined"
            print(f"ok  {entry['name']}: {entry['bytes'] / 2**20:.2f} MiB, "
                  f"{len(entry['parts'])} part(s); {line}")
        except Exception as error:
            problems.append(f"{entry['name']}: {error}")
            print(f"BAD {entry['name']}: {error}")
    return problems


def _safe() -> dict:
    """tarfile's 'data' filter where this Python has it."""
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", type=Path, help="the folder of returned files")
    parser.add_argument("out", type=Path, help="where the originals are written")
    args = parser.parse_args(argv)
    problems = unpack(args.files, args.out)
    print(f"{len(problems)} problem(s)" if problems else "every file checks")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
