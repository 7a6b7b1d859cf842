"""`ddim cache list|fetch`: the names `--ckpt`, `--data` and `--ref` take, their sizes and what is
cached already; fetching them ahead of time (for a machine that will be offline)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ddim.checkpoint import bundled_checkpoint, load_checkpoint
from ddim.checkpoint.named import BUNDLED_NAME, bundled_path
from ddim.cli._common import check_count, device_from_flag
from ddim.data import named_dataset_folder
from ddim.errors import DdimError
from ddim.evaluation.references import REFERENCES, reference_file
from ddim.hub import (
    DATA,
    WEIGHTS,
    cache_root,
    cache_state,
    cached_file,
    is_offline,
    source_url,
    weights_source,
)
from ddim.hub.cache import CACHE_ENV, MIRROR_ENV, OFFLINE_ENV

HELP = "The pretrained weights, datasets and FID references by name: list them, fetch them ahead."
EXAMPLE = "ddim cache list && ddim cache fetch ema_cifar10 cifar10-train --data cifar10"
LIST_EXAMPLE = "ddim cache list"
FETCH_EXAMPLE = "ddim cache fetch ema_cifar10 cifar10-train --data cifar10"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `list` and `fetch` sub-subcommands."""
    subs = parser.add_subparsers(dest="cache_command", metavar="{list,fetch}", required=True)
    listing = _subparser(subs, "list", "Every name, its size, its source and whether it is "
                         "cached.", LIST_EXAMPLE)  # fmt: skip
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(_cache_run=run_list)
    fetch = _subparser(subs, "fetch", "Fetch weights, datasets and FID references into the cache "
                       "now (references are computed from their dataset).", FETCH_EXAMPLE)
    fetch.add_argument("names", nargs="*", metavar="NAME",
                       help=f"pretrained weights ({', '.join(WEIGHTS)}) or FID references "
                            f"({', '.join(REFERENCES)})")  # fmt: skip
    fetch.add_argument("--data", action="append", default=[], metavar="NAME",
                       help=f"a dataset by name ({', '.join(DATA)}; repeatable)")
    fetch.add_argument("--device", help="where FID references are computed (default: cuda if "
                       "available, else cpu)")  # fmt: skip
    fetch.add_argument("--batch", type=int, default=64,
                       help="Inception batch size for FID references (default 64)")
    fetch.set_defaults(_cache_run=run_fetch)


def _subparser(subs, name: str, help_: str, example: str) -> argparse.ArgumentParser:
    """A `ddim cache` sub-subcommand parser whose help ends with a copy-paste example."""
    return subs.add_parser(
        name, help=help_, description=help_, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int | None:
    """Dispatch to `list` or `fetch`."""
    return args._cache_run(args)


# --- list ----------------------------------------------------------------------------------------


def cache_entries() -> list[dict]:
    """One record per name: kind, the flag that takes it, size, state, source URL and MD5."""
    bundled = bundled_path()
    entries = [{
        "name": BUNDLED_NAME, "kind": "weights", "flag": "--ckpt, --init",
        "size": f"{bundled.stat().st_size / 1e6:.0f} MB" if bundled.is_file() else "absent",
        "state": "ships with the package" if bundled.is_file() else "missing",
        "url": None, "md5": None, "description": "this package's CIFAR-10 model (EMA, float16)",
    }]  # fmt: skip
    for source in (*WEIGHTS.values(), *DATA.values()):
        entries.append({
            "name": source.name, "kind": source.kind,
            "flag": "--ckpt, --init" if source.kind == "weights" else "--data, --images",
            "size": source.size_text(), "state": _source_state(source), "url": source_url(source),
            "md5": source.md5, "description": source.description,
        })  # fmt: skip
    for name, (dataset, split) in REFERENCES.items():
        made = (cache_root() / "fid-refs" / f"{name}.npz").is_file()
        entries.append({
            "name": name, "kind": "FID reference", "flag": "--ref", "size": "about 116 MB",
            "state": "cached" if made else "missing", "url": None, "md5": None,
            "description": f"Inception statistics of {dataset} [{split}], made once from it",
        })  # fmt: skip
    return entries


def _source_state(source) -> str:
    """A source's cache state; a dataset is also cached once unpacked."""
    state = cache_state(source)
    unpacked = cache_root() / "data" / source.name
    if source.kind == "data" and unpacked.is_dir():
        return "cached (unpacked)"
    return {"unchecked": "cached (checked on first use)"}.get(state, state)


def run_list(args: argparse.Namespace) -> int:
    """Print the names as a table (or JSON), under the cache folder and its settings."""
    entries = cache_entries()
    if args.json:
        print(json.dumps({"cache": str(cache_root()), "offline": is_offline(),
                          "mirror": os.environ.get(MIRROR_ENV) or None, "names": entries},
                         indent=2))  # fmt: skip
        return 0
    print(f"cache: {cache_root()}  ({CACHE_ENV} moves it)")
    print(f"offline: {'yes' if is_offline() else 'no'} ({OFFLINE_ENV}); "
          f"mirror: {os.environ.get(MIRROR_ENV) or 'none'} ({MIRROR_ENV})")  # fmt: skip
    rows = [("NAME", "KIND", "TAKEN BY", "SIZE", "STATE", "WHAT")]
    rows += [(e["name"], e["kind"], e["flag"], e["size"], e["state"], e["description"])
             for e in entries]  # fmt: skip
    widths = [max(len(row[k]) for row in rows) for k in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[5])
    print("Hugging Face hub ids (--ckpt OWNER/NAME, e.g. google/ddpm-cifar10-32) live in "
          "huggingface_hub's own cache (pip install 'ddim[hub]').")
    return 0


# --- fetch ---------------------------------------------------------------------------------------


def run_fetch(args: argparse.Namespace) -> int:
    """Fetch each name into the cache (weights checked against their MD5, datasets unpacked,
    references computed), and print where each is."""
    check_count(args.batch, "--batch")
    if not args.names and not args.data:
        raise DdimError("name something to fetch: weights, FID references, or --data NAME "
                        "(`ddim cache list` shows the names)")  # fmt: skip
    for name in args.data:
        if name not in DATA:
            raise DdimError(f"--data {name!r}: the datasets by name are {', '.join(DATA)}")
    for name in args.names:
        if name != BUNDLED_NAME and weights_source(name) is None and name not in REFERENCES:
            raise DdimError(
                f"{name!r} is neither pretrained weights ({', '.join(WEIGHTS)}) nor a FID "
                f"reference ({', '.join(REFERENCES)}); datasets go after --data"
            )
    for name in args.data:
        print(f"{name}: {named_dataset_folder(name)}")
    for name in args.names:
        print(f"{name}: {_fetch_name(name, args)}")
    return 0


def _fetch_name(name: str, args: argparse.Namespace):
    """The local path of weights (fetched, then read once: weights that do not load fail now)
    or of a reference (made)."""
    if name == BUNDLED_NAME:
        return bundled_checkpoint()
    if name in REFERENCES:
        device = device_from_flag(args.device)
        print(f"(computing {name} on {device})", file=sys.stderr)
        return reference_file(name, device=device, batch_size=args.batch)
    load_checkpoint(name)
    return cached_file(weights_source(name))
