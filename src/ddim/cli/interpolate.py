"""`ddim interpolate`: slerp between two latents x_T and decode with DDIM (App. D.5)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ddim.cli._common import (
    add_model_arguments,
    add_ode_arguments,
    add_overwrite_argument,
    check_count,
    check_image_memory,
    check_seeds,
    model_from_flags,
    picture_output,
    settings_from_flags,
)
from ddim.errors import DdimError
from ddim.progress import progress_bar

HELP = "Interpolate in x_T by slerp (App. D.5): between two seeds, or two encoded images."
EXAMPLE = "ddim interpolate --ckpt ckpt.safetensors --seeds 3 7 --num 10 --steps 50 -o strip.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ddim interpolate`."""
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--seeds", type=int, nargs="+",
                        help="pairs of seeds A B [C D …]: x_T as `ddim sample` draws them")
    source.add_argument("--images", nargs="+",
                        help="pairs of image files, or one dataset with --indices")
    parser.add_argument("--indices", type=int, nargs="+",
                        help="pairs of item indices into the dataset given by --images")
    parser.add_argument("--subdir", help="part of the dataset (CIFAR-10: train/test)")
    parser.add_argument("--num", type=int, default=10, help="images per strip, ends included")
    add_ode_arguments(parser)
    parser.add_argument("-o", "--out", default="interpolate.png",
                        help="picture, one row per pair: .png, or .jpg/.jpeg for JPEG; settings "
                             "go to the same name with .json")
    add_overwrite_argument(parser)


def _pairs(values: list, flag: str) -> list[tuple]:
    """Consecutive pairs of a flag's values; an odd count is an error."""
    if len(values) < 2 or len(values) % 2:
        raise DdimError(f"{flag} takes pairs of values, got {len(values)}")
    return list(zip(values[0::2], values[1::2]))


def endpoint_images(args, config) -> tuple[torch.Tensor, dict]:
    """The uint8 images to interpolate between (pairs in consecutive order), and what identifies
    them: the files' hashes, or the dataset's fingerprint and the indices."""
    from ddim.data import load_image_files, open_dataset, take_images
    from ddim.files import file_sha256

    size = config.data.image_size
    if args.indices is None:
        _pairs(args.images, "--images")
        images = load_image_files(args.images, size)
        return images, {"image_sha256": [file_sha256(path) for path in args.images]}
    if len(args.images) != 1:
        raise DdimError(f"--indices needs one dataset in --images, got {len(args.images)} paths")
    _pairs(args.indices, "--indices")
    dataset = open_dataset(args.images[0], subdir=args.subdir, resolution=size, progress=False)
    identity = {"dataset": json.loads(dataset.fingerprint()), "indices": args.indices}
    return take_images(dataset, args.indices), identity


def _endpoints(args, config) -> tuple[torch.Tensor | None, dict]:
    """(the images to interpolate between, or None for seeds; what identifies them)."""
    if args.seeds is not None:
        _pairs(args.seeds, "--seeds")
        return None, {"seeds": args.seeds}
    return endpoint_images(args, config)


def strips(args, model, sampler, shape, endpoints: torch.Tensor | None) -> list[torch.Tensor]:
    """One uint8 strip (num, C, H, W) per pair of seeds or of `endpoints` images."""
    from ddim.sampling.runners import interpolate_images, interpolate_latents
    from ddim.sampling.seeds import seed_latents

    rows = []
    if endpoints is None:
        for a, b in progress_bar(_pairs(args.seeds, "--seeds"), desc="interpolating", unit="pair"):
            z = seed_latents([a, b], shape, model.device)
            rows.append(interpolate_latents(model.eps_model, sampler, z[0], z[1], args.num).cpu())
        return rows
    pairs = endpoints.to(model.device)
    for k in progress_bar(range(0, len(pairs), 2), desc="interpolating", unit="pair"):
        path = interpolate_images(model.eps_model, sampler, pairs[k : k + 2], args.num)
        rows.append(path.cpu())
    return rows


def run(args) -> int:
    """Write the interpolation strips as one picture grid and a JSON record beside it."""
    from ddim.files import claim_output, write_text
    from ddim.images import save_grid

    check_count(args.num, "--num", least=2)
    for seed in args.seeds or []:
        check_seeds(seed, 1, "--seeds")
    if args.indices is not None and args.images is None:
        raise DdimError("--indices needs --images DATA")
    model = model_from_flags(args)
    settings = settings_from_flags(args, model, eta=0.0)  # the ODE: DDIM with η = 0
    sampler, shape = settings.sampler, settings.shape
    pairs = len(args.seeds or args.indices or args.images) // 2
    check_image_memory(args.num * max(pairs, 1), shape, "--num", bytes_per_value=4)
    endpoints, source = _endpoints(args, model.config)
    recorded = {**model.settings(), **source, "num": args.num, "steps": sampler.steps,
                "skip": sampler.skip}  # fmt: skip
    output, record_path = picture_output(args.out, "interpolate")  # before any image is made
    with claim_output(output, recorded, overwrite=args.overwrite):
        rows = strips(args, model, sampler, shape, endpoints)
        save_grid(torch.cat(rows), args.out, nrow=args.num)
        record = {
            **model.record(),
            "seeds": args.seeds, "images": args.images, "indices": args.indices,
            "subdir": args.subdir, "num": args.num, "steps": sampler.steps, "skip": sampler.skip,
            "timesteps": list(sampler.timesteps), "eta": 0.0,
            "latents": "seeds: x_T drawn per seed as `ddim sample`; images: DDIM encoding",
            "interpolation": "slerp, alpha = linspace(0, 1, num)",
        }  # fmt: skip
        write_text(record_path, json.dumps(record, indent=2))
    print(f"wrote {len(rows)} strip(s) of {args.num} to {args.out}", file=sys.stderr)
    return 0
