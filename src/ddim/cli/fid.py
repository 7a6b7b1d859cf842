"""`ddim fid ref|calc`: dataset statistics once, then the FID and KID of generated images against
them."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ddim.cli._common import (
    SELECTION,
    SPREAD_HELP,
    add_count_argument,
    add_overwrite_argument,
    check_count,
    device_from_flag,
)
from ddim.errors import DdimError
from ddim.evaluation import stats_file
from ddim.evaluation.references import REFERENCES
from ddim.evaluation.stats_file import KID_FEATURES

HELP = ("Fréchet and Kernel Inception Distances: `ref` makes dataset statistics, `calc` scores "
        "images.")
EXAMPLE = (
    "ddim fid ref data/cifar-10-batches-py --subdir train -o fid-refs/cifar10-train.npz && "
    "ddim fid calc samples/ --ref fid-refs/cifar10-train.npz"
)
REF_EXAMPLE = "ddim fid ref data/cifar-10-batches-py --subdir train -o fid-refs/cifar10-train.npz"
CALC_EXAMPLE = "ddim fid calc samples/ --ref fid-refs/cifar10-train.npz --json samples-fid.json"


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Options shared by `ref` and `calc`: how images are read and where Inception runs."""
    parser.add_argument("--subdir", default=None, help="folder inside a zip/folder to read from")
    parser.add_argument("--resolution", type=int, default=None,
                        help="resize images to this square size on load (default: as stored)")
    add_count_argument(parser, None, f"use N images evenly spread through the source (default: "
                       f"all; {SPREAD_HELP})")
    parser.add_argument("--batch", type=int, default=64, help="Inception batch size (default 64)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes (default 0)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda if available, else cpu)")
    add_overwrite_argument(parser)


def _subparser(subs, name: str, help_: str, example: str) -> argparse.ArgumentParser:
    """A `ddim fid` sub-subcommand parser whose help ends with a copy-paste example."""
    return subs.add_parser(
        name, help=help_, description=help_, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `ref` and `calc` sub-subcommands."""
    subs = parser.add_subparsers(dest="fid_command", metavar="{ref,calc}", required=True)
    ref = _subparser(subs, "ref", "Compute Inception statistics of a dataset, with a random "
                     f"{KID_FEATURES:,} of its features for KID (.npz).", REF_EXAMPLE)
    ref.add_argument("data", help="image folder, zip, cifar-10-batches-py folder or NHWC .npz, "
                     "or a dataset name (cifar10, with --subdir train or test)")
    ref.add_argument("-o", "--out", required=True, help="output stats file (.npz)")
    _add_common(ref)
    ref.set_defaults(_fid_run=run_ref)
    calc = _subparser(subs, "calc", "FID and KID of images against reference statistics.",
                      CALC_EXAMPLE)
    calc.add_argument("images", help="image folder, zip or NHWC .npz of generated images, or a "
                      "`ddim sample` output folder (its samples.npz)")
    calc.add_argument("--ref", required=True,
                      help="reference stats: a file from `ddim fid ref` (.npz), or a name "
                           f"({', '.join(REFERENCES)}: made once into the cache)")
    calc.add_argument("--json", default=None,
                      help="where to write the result (default: IMAGES-fid.json beside IMAGES)")
    _add_common(calc)
    calc.set_defaults(_fid_run=run_calc)


def run(args: argparse.Namespace) -> int | None:
    """Check the numbers, then dispatch to `ref` or `calc`."""
    check_count(args.batch, "--batch")
    check_count(args.workers, "--workers", least=0)
    if args.n is not None:
        check_count(args.n, "--n", least=2)
    return args._fid_run(args)


def sample_folder_images(path: str) -> str:
    """The images of a `ddim sample` output folder (samples.npz, else png/), checked against the
    folder's record; other paths as given.

    A sample folder also holds grid.png and the shards, which are not samples to score.
    """
    folder = Path(path)
    if not _is_sample_folder(folder):
        return path
    for name in ("samples.npz", "png"):
        if (folder / name).exists():
            _check_sample_count(folder, folder / name)
            print(f"scoring {folder / name}, the images of `ddim sample`", file=sys.stderr)
            return str(folder / name)
    raise DdimError(f"{path} is a `ddim sample` folder without samples.npz or png/; rerun "
                    "`ddim sample` into it without --no-npz to write them")


def _is_sample_folder(folder: Path) -> bool:
    """Whether a folder is the output of `ddim sample` (its summary, or its record, says so)."""
    from ddim.files import folder_output, read_record

    if not folder.is_dir():
        return False
    record = read_record(folder_output(folder, ()))
    return (folder / "sample.json").is_file() or (record or {}).get("command") == "sample"


def _check_sample_count(folder: Path, images: Path) -> None:
    """Refuse images of a sample folder that are not the N its sample.json records: what an
    earlier run left (a samples.npz beside a run with --no-npz, PNGs beyond a smaller --n)."""
    from ddim.files import npz_headers

    summary = folder / "sample.json"
    try:
        n = json.loads(summary.read_text(encoding="utf-8"))["n"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DdimError(f"{folder} has no readable sample.json: its last `ddim sample` did not "
                        "finish; run it again to completion before scoring") from None
    if images.is_dir():
        found = sum(1 for p in images.iterdir() if p.suffix.lower() == ".png")
    else:
        shape = next(iter(npz_headers(images).values()), ((), None))[0]
        found = shape[0] if shape else 0
    if found != n:
        raise DdimError(
            f"{images} holds {found} images but {summary} records {n}: they were left by an "
            f"earlier run; make them again with `ddim sample` into {folder} (--overwrite starts "
            "it afresh)"
        )


def _open(path: str, args: argparse.Namespace):
    """(uint8 images: one tensor when already decoded, else the lazy dataset; a description;
    the dataset)."""
    from torch.utils.data import Subset

    from ddim.data import open_dataset, spread_indices

    dataset = open_dataset(path, subdir=args.subdir, resolution=args.resolution)
    n = len(dataset) if args.n is None else args.n
    if n < 2:
        raise DdimError(f"--n must be >= 2 (a covariance needs two images), got {n}")
    if n > len(dataset):
        raise DdimError(f"--n {n} is more than the {len(dataset)} images in {dataset.source}")
    images = dataset.as_array()
    c, h, w = dataset[0].shape
    part = "" if n == len(dataset) else f"{n} evenly spread of "
    source = f"{dataset.source}: {part}{len(dataset)} images, {c}x{h}x{w} uint8"
    if n == len(dataset):
        return (dataset if images is None else images), source, dataset
    indices = spread_indices(len(dataset), n)
    if images is not None:
        return images[indices], source, dataset
    return Subset(dataset, indices), source, dataset


def _data_settings(dataset, args: argparse.Namespace) -> dict:
    """What decides a stats file or a score: the images (fingerprint), how many, Inception."""
    from ddim.evaluation import inception

    return {"images": json.loads(dataset.fingerprint()), "n": args.n, "selection": SELECTION,
            "network_sha256": inception.network_sha256(), "convention": inception.CONVENTION}


def run_ref(args: argparse.Namespace) -> int:
    """`ddim fid ref`: write the dataset's Inception statistics."""
    from ddim.evaluation import inception, references
    from ddim.files import claim_output, file_output

    inception.inception_path()  # fail early without the optional extra
    device = device_from_flag(args.device)
    images, source, dataset = _open(args.data, args)
    settings = _data_settings(dataset, args)
    with claim_output(file_output(args.out, command="fid ref"), settings,
                      overwrite=args.overwrite) as reused:  # fmt: skip
        stats = _made_already(args.out) if reused else None
        if stats is not None:  # the same images and settings, with KID's features: made already
            print(f"reused {args.out}: {stats.n} images, made with the same images and settings")
            return 0
        stats = references.compute_reference(
            images, args.out, source=source, device=device, batch_size=args.batch,
            workers=args.workers, resolution=dataset.resolution,
        )
    print(f"wrote {args.out}: {stats.n} images, convention {stats.convention}")
    return 0


def _check_writable(out: Path) -> None:
    """Refuse, before any work, a score file whose folder cannot hold it, naming --json."""
    folder = out.parent if str(out.parent) else Path(".")
    if folder.exists() and not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        why = "is not a folder" if not folder.is_dir() else "is not writable"
        raise DdimError(f"the score would go to {out}, but {folder} {why}: choose where with "
                        "--json PATH")  # fmt: skip


def _made_already(path: str):
    """The stats file at `path` if it is whole and current (it loads, and keeps KID's features),
    else None: a file made before KID, or damaged, is made again."""
    try:
        stats = stats_file.load_stats(path)
    except DdimError:
        return None
    return stats if stats.features is not None else None


def _json_path(images: str, override: str | None) -> Path:
    """Where `calc` writes its JSON: the override, else IMAGES-fid.json beside IMAGES."""
    if override:
        return Path(override)
    path = Path(images.rstrip("/\\"))
    name = path.name if path.is_dir() else path.stem
    return path.parent / f"{name}-fid.json"


def run_calc(args: argparse.Namespace) -> int:
    """`ddim fid calc`: print the FID and KID of IMAGES against --ref and write them as JSON."""
    from ddim.evaluation import distances, references, scoring
    from ddim.files import claim_output, file_output, file_sha256, write_text

    device = device_from_flag(args.device)
    out = _json_path(args.images, args.json)
    _check_writable(out)
    images, source, dataset = _open(sample_folder_images(args.images), args)  # cheap: first
    ref_file = references.reference_file(args.ref, device=device, batch_size=args.batch)
    ref = stats_file.load_stats(ref_file)
    stats_file.check_resolution(ref, dataset.resolution, str(args.ref))
    settings = {**_data_settings(dataset, args), "ref_sha256": file_sha256(ref_file)}
    with claim_output(file_output(out, command="fid calc"), settings, overwrite=args.overwrite):
        start = time.perf_counter()
        gen = stats_file.stats_from_images(
            images, source=source, device=device, batch_size=args.batch, workers=args.workers,
            keep_features=None,  # all of them, for KID
        )
        score = distances.frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma)
        kid, kid_text = _kid(gen, ref, ref_file)
        result = {
            "fid": score, "kid": kid, "n": gen.n, "images": gen.source, "ref": str(args.ref),
            "ref_source": ref.source, "ref_n": ref.n, "network_sha256": gen.network_sha256,
            "convention": gen.convention, "device": str(device),
            "seconds": round(time.perf_counter() - start, 3),
        }
        caution = scoring.few_images_caution(gen.n)
        if caution:
            result["caution"] = caution
        write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"FID {score:.4f}  ({gen.n} images vs {ref.n} in {args.ref}); {kid_text}; wrote {out}")
    if caution:
        print(f"caution: {caution}")
    return 0


def _kid(gen, ref, ref_path: str) -> tuple[dict, str]:
    """KID of the generated stats' features as a JSON record and a phrase; where the reference
    keeps no features, a record saying so and the command that rebuilds it (FID still stands)."""
    from ddim.evaluation import distances, references

    if ref.features is None:
        why = references.missing_features(ref, ref_path)
        return {"unavailable": why}, f"KID unavailable: {why}"
    kid = distances.kernel_inception_distance(gen.features, ref.features)
    record = {**kid._asdict(), "ref_features": len(ref.features)}
    text = (f"KID {kid.mean:.6f} ± {kid.std:.6f} (mean ± std over {kid.n_subsets} subsets of "
            f"{kid.subset_size} features per set)")
    return record, text
