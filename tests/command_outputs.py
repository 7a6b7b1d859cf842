"""Every output of the sampling-side commands at tiny size, reduced to SHA-256 digests, so that a
change of code meant to leave the images alone can be checked to change no output at all.

`record_outputs(folder)` runs each command line of `RUNS`, and the README's Python API, in `folder`
on the tiny checkpoint of conftest.py (relative paths, float32, one thread) and returns
{"run/file": digest}. A digest sees what decides an output, not when or where it was made:

- PNG and markdown files by their bytes (a folder's lock file is not an output);
- .npz files by their arrays (a zip member carries the time it was written);
- JSON records parsed, with the timings (`seconds`, `images_per_s`) taken out, the digests of the
  inputs replaced by their names (an .npz input's bytes hold a time), a dataset fingerprint's
  file stamps (paths, mtimes) taken out, and every whole config a record echoes replaced by a
  placeholder: it is the checkpoint's config, which changes with the config schema, not with
  sampling (what sampling reads of it shows in the images and in the rest of the record).

`arithmetic_fingerprint()` digests one forward pass of the tiny network and a draw of noise: the
recorded digests mean something only where it is the same (the same kernels, the same order of
sums). Record the digests with

    python tests/command_outputs.py tests/data/command_outputs.json
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import save_tiny_checkpoint
from PIL import Image

MODEL = ["--ckpt", "tiny.safetensors", "--device", "cpu"]
FP32 = [*MODEL, "--precision", "fp32"]

# name -> the command lines run, in order, into the output `name` (a folder, or name/FILE).
RUNS: dict[str, list[list[str]]] = {
    "sample-ddim": [["sample", *FP32, "--n", "6", "--batch", "4", "--png", "-o", "sample-ddim"]],
    "sample-quad-eta": [["sample", *FP32, "--n", "5", "--steps", "3", "--skip", "quad", "--eta",
                         "0.5", "--clip-x0", "on", "--seed", "5", "-o", "sample-quad-eta"]],
    "sample-trailing-raw": [["sample", *MODEL, "--fp32", "--n", "3", "--steps", "2", "--skip",
                             "trailing", "--eta", "1", "--raw", "--no-npz",
                             "-o", "sample-trailing-raw"]],
    "sample-ddpm-default": [["sample", *FP32, "--sampler", "ddpm", "--steps", "3", "--n", "3",
                             "-o", "sample-ddpm-default"]],
    "sample-ddpm-small": [["sample", *FP32, "--sampler", "ddpm", "--variance", "small",
                           "--steps", "3", "--n", "3", "-o", "sample-ddpm-small"]],
    "sample-ddpm-large": [["sample", *FP32, "--sampler", "ddpm", "--variance", "large",
                           "--steps", "3", "--n", "3", "-o", "sample-ddpm-large"]],
    "sample-ddpm-noclip": [["sample", *FP32, "--sampler", "ddpm", "--variance", "large",
                            "--clip-x0", "off", "--skip", "quad", "--steps", "5", "--n", "2",
                            "-o", "sample-ddpm-noclip"]],
    "sample-dpmpp-2m-logsnr": [["sample", *FP32, "--sampler", "dpmpp-2m", "--skip", "logsnr",
                                "--steps", "4", "--n", "3", "-o", "sample-dpmpp-2m-logsnr"]],
    "sample-grow": [["sample", *FP32, "--n", "2", "--batch", "3", "-o", "sample-grow"],
                    ["sample", *FP32, "--n", "5", "--batch", "3", "-o", "sample-grow"]],
    "encode": [["encode", *FP32, "--images", "data.npz", "--n", "5", "--steps", "2", "--batch",
                "3", "-o", "encode/latents.npz"]],
    "reconstruct": [["reconstruct", *FP32, "--images", "data.npz", "--n", "3", "--steps", "1",
                     "2", "--skip", "quad", "--show", "2", "-o", "reconstruct"]],
    "interpolate-seeds": [["interpolate", *FP32, "--seeds", "3", "7", "1", "2", "--num", "4",
                           "--steps", "3", "-o", "interpolate-seeds/strip.png"]],
    "interpolate-files": [["interpolate", *FP32, "--images", "a.png", "b.png", "--num", "3",
                           "--steps", "2", "--skip", "quad", "-o", "interpolate-files/strip.png"]],
    "interpolate-dataset": [["interpolate", *FP32, "--images", "data.npz", "--indices", "0", "1",
                             "--num", "3", "--steps", "2", "-o", "interpolate-dataset/strip.png"]],
    "trajectory": [["trajectory", *FP32, "--seed", "1", "--steps", "2", "4", "--show", "3",
                    "-o", "trajectory/traj.png"]],
    "table": [["table", *FP32, "--ref", "ref.npz", "--n", "3", "--batch", "2", "--steps", "1",
               "2", "--etas", "0", "1", "--sigma-hat", "--dpmpp-2m", "-o", "table"]],
    "oracle": [["oracle", "--steps", "2", "5", "--etas", "0", "1", "--n", "50", "--dim", "4",
                "-o", "oracle/oracle.md"]],
}
INPUTS = ("tiny.safetensors", "data.npz", "a.png", "b.png", "ref.npz")
TIMINGS = {"seconds", "images_per_s"}


def write_inputs(folder: Path) -> None:
    """The tiny checkpoint, six random 8×8 images (.npz and two PNGs), FID reference stats."""
    from ddim.fid import CONVENTION, FidStats, network_sha256, save_stats

    save_tiny_checkpoint(folder / "tiny.safetensors")
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(folder / "data.npz", arr_0=pixels)
    Image.fromarray(pixels[0]).save(folder / "a.png")
    Image.fromarray(pixels[1]).save(folder / "b.png")
    stats = FidStats(np.zeros(4), np.eye(4), 10, network_sha256(), CONVENTION, "fake")
    save_stats(stats, folder / "ref.npz")


def _stub_scores(cells: list[str]):
    """A `compute_scores` that digests the images it is given and returns their mean as the FID
    (and no KID: the reference keeps no features)."""
    from ddim.fid import Scores

    def compute_scores(images, ref, **_):
        batches = torch.cat(list(images))
        cells.append(hashlib.sha256(batches.numpy().tobytes()).hexdigest())
        return Scores(float(batches.double().mean()), None)

    return compute_scores


def run_commands(folder: Path) -> dict[str, str]:
    """Run every command line of RUNS in `folder`; the FID stub's digests of the table's cells."""
    import ddim.fid
    from ddim.cli import main

    cells: list[str] = []
    real_scores = ddim.fid.compute_scores
    ddim.fid.compute_scores = _stub_scores(cells)
    try:
        for argvs in RUNS.values():
            for argv in argvs:
                with contextlib.redirect_stdout(io.StringIO()):
                    code = main(argv)
                if code != 0:
                    raise RuntimeError(f"ddim {' '.join(argv)} exited with {code}")
    finally:
        ddim.fid.compute_scores = real_scores
    return {f"table/cell-{k}-images": digest for k, digest in enumerate(cells)}


def api_outputs() -> dict[str, str]:
    """The README's Python API on the tiny checkpoint: each result tensor digested."""
    import ddim

    net, config = ddim.load_model("tiny.safetensors")
    eps_model = lambda x, t: net(x, t)  # noqa: E731
    betas = config.diffusion.betas()
    x_T = ddim.randn((3, 3, 8, 8), torch.Generator().manual_seed(0))
    gens = ddim.generators_from_seeds(range(3))
    x_0 = ddim.sample(eps_model, x_T, betas, steps=5, skip="quad", eta=0.0)
    results = {
        "sample": x_0,
        "sample_eta": ddim.sample(eps_model, ddim.randn((3, 3, 8, 8), gens), betas, steps=4,
                                  eta=1.0, generator=gens),
        "sample_ddpm": ddim.sample_ddpm(eps_model, x_T, betas, steps=6, variance="large",
                                        generator=torch.Generator().manual_seed(1)),
        "encode": ddim.encode(eps_model, x_0, betas, steps=5),
        "reconstruct": ddim.reconstruct(eps_model, x_0, betas, steps=3, skip="trailing"),
        "interpolate": ddim.interpolate(eps_model, x_0[0], x_0[1], betas, steps=3, num=4),
        "sample_dpmpp_2m": ddim.sample_dpmpp_2m(eps_model, x_T, betas, steps=6, skip="logsnr"),
        "timesteps": torch.tensor(ddim.timesteps(1000, 100, "quad")),
    }
    return {f"api/{name}": _tensor_digest(value) for name, value in results.items()}


def _tensor_digest(value: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    array = value.detach().contiguous().numpy()
    return _sha(f"{array.dtype}{array.shape}".encode() + array.tobytes())


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _clean(value, replace: dict[str, str]):
    """A JSON value without timings, file stamps or whole configs; input digests named."""
    if isinstance(value, dict):
        if {"model", "diffusion", "data", "training", "sampling"} <= value.keys():
            return "<config>"
        out = {}
        for key, item in value.items():
            if key in TIMINGS or (key == "files" and {"kind", "items"} <= value.keys()):
                continue  # timings; a dataset fingerprint's paths and mtimes
            if key == "path" and {"kind", "items"} <= value.keys():
                continue
            out[key] = _clean(item, replace)
        return out
    if isinstance(value, list):
        return [_clean(item, replace) for item in value]
    if isinstance(value, str):
        if value.startswith("{") and value.endswith("}"):
            with contextlib.suppress(ValueError):
                return {"json": _clean(json.loads(value), replace)}
        return replace.get(value, value)
    return value


def file_digest(path: Path, replace: dict[str, str]) -> str:
    """The digest of one output file (see the module docstring)."""
    if path.suffix == ".json":
        text = json.dumps(_clean(json.loads(path.read_text()), replace), sort_keys=True)
        return _sha(text.encode())
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            parts = []
            for name in sorted(arrays.files):
                array = arrays[name]
                if array.dtype.kind == "U":  # a JSON record stored as a string
                    text = json.dumps(_clean(json.loads(str(array)), replace), sort_keys=True)
                    parts.append(name.encode() + text.encode())
                else:
                    parts.append(f"{name}{array.dtype}{array.shape}".encode() + array.tobytes())
        return _sha(b"\0".join(parts))
    data = path.read_bytes()
    if path.name == "reconstruct.md":  # its last column is seconds
        data = re.sub(rb"\| [0-9.]+ \|\n", b"| s |\n", data)
    return _sha(data)


def arithmetic_fingerprint() -> str:
    """A digest of the tiny network's ε on fixed inputs and of seeded noise (one thread)."""
    import ddim

    net, _ = ddim.load_model("tiny.safetensors")
    x = ddim.randn((2, 3, 8, 8), torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps = net(x, torch.tensor([0, 999]))
    return _sha(x.numpy().tobytes() + eps.numpy().tobytes())


@contextlib.contextmanager
def _inside(folder: Path):
    """Work in `folder` with one torch thread; restore both."""
    cwd, threads = Path.cwd(), torch.get_num_threads()
    os.chdir(folder)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def record_outputs(folder: Path) -> dict:
    """{"fingerprint": …, "outputs": {"run/file": digest}} of every run, made in `folder`."""
    folder = Path(folder)
    with _inside(folder):
        write_inputs(folder)
        outputs = run_commands(folder)
        outputs.update(api_outputs())
        fingerprint = arithmetic_fingerprint()
    replace = {_sha((folder / name).read_bytes()): f"<sha256 of {name}>" for name in INPUTS}
    replace[str(folder)] = "<folder>"
    for name in RUNS:
        root = folder / name
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".lock"):
            outputs[str(path.relative_to(folder))] = file_digest(path, replace)
    return {"fingerprint": fingerprint, "outputs": dict(sorted(outputs.items()))}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        recorded = record_outputs(Path(tmp).resolve())
    Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
    Path(sys.argv[1]).write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"{len(recorded['outputs'])} outputs recorded in {sys.argv[1]}")
