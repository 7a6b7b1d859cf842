"""The golden outputs: what every command that writes from a checkpoint, and the README's Python
API, make at tiny size, kept in the repository in a form any x86 CPU can be held to.

`collect_outputs(folder)` runs each command line of `RUNS` in `folder` on the tiny checkpoint of
conftest.py (relative paths, float32, one thread), then the README's Python API, and splits what
they made into two dicts keyed "run/file" (with ":member" for an .npz member or the numbers a
file measured):

- records: what says how an output was made (JSON records, markdown tables, a checkpoint's
  metadata and tensor list, a chart's size), normalised to what decides an output and not when or
  where it was made, then compared exactly. Taken out: timings (`seconds`, `images_per_s`,
  reconstruct.md's seconds column), a dataset fingerprint's file stamps (paths, mtimes), a
  checkpoint's build stamps (git commit, package version, its own digests). Replaced by names:
  the SHA-256 of the inputs and of the checkpoints a run wrote (their bytes hold a commit), and
  every whole config a record echoes ("<config>": it is the checkpoint's, which changes with the
  config schema, not with sampling). Replaced by "<x>" and kept as arrays: the numbers a record
  measured (`mse`, `fid`, `kid`, and every decimal of a markdown table).
- arrays: images (uint8: PNGs decoded, .npz images, the images of each table cell), latents and
  the API's tensors (float), a converted checkpoint's per-tensor sums, and the measured numbers.

The golden data are tests/data/command_outputs.json (the records) and
tests/data/command_outputs/RUN.npz (the arrays of each run). `compare_outputs` holds a new
collection to them: records equal; integer arrays equal; uint8 images within one level, in at
most IMAGE_SHARE_MOVED of an output's values; floats within FLOAT_TOLERANCE, the numbers a record
measured within MEASURED_TOLERANCE. The tolerances were measured on the code paths that x86 CPUs
take through torch: its own vector kernels at AVX2 and without SIMD (ATEN_CPU_CAPABILITY=default),
oneDNN's convolutions held to AVX or SSE4.1 (ONEDNN_MAX_CPU_ISA) or not used at all, MKL in its
SSE2 path (MKL_CBWR=COMPATIBLE), and these combined, each against the recording (AVX2); each
constant says what it measured.

An exact mode is for refactoring on one machine, where nothing may move at all:

    python tests/command_outputs.py --record            # rewrite the golden data in tests/data/
    python tests/command_outputs.py --digests OUT.json  # SHA-256 of every output, this machine
    python tests/command_outputs.py --compare OUT.json  # run again: every output that changed

(`--compare` exits 1 and lists each changed, new or missing output; a digest sees the same
normalised records and arrays, the chart's pixels too.)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from conftest import save_tiny_checkpoint
from PIL import Image

MODEL = ["--ckpt", "tiny.safetensors", "--device", "cpu"]
FP32 = [*MODEL, "--precision", "fp32"]
HALF = ["--ckpt", "convert-half/half.safetensors", "--device", "cpu", "--precision", "fp32"]

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
               "2", "--etas", "0", "1", "--sigma-hat", "--dpmpp-2m", "--seed", "3", "-o",
               "table"]],
    "oracle": [["oracle", "--steps", "2", "5", "--etas", "0", "1", "--n", "50", "--dim", "4",
                "-o", "oracle/oracle.md"]],
    # convert's float16 EMA weights, and images sampled from them
    "convert-half": [["convert", "tiny.safetensors", "convert-half/half.safetensors", "--half"],
                     ["sample", *HALF, "--n", "3", "--steps", "3", "--seed", "2",
                      "-o", "convert-half/sample"]],
}
INPUTS = ("tiny.safetensors", "data.npz", "a.png", "b.png", "ref.npz")
TIMINGS = {"seconds", "images_per_s"}
MEASURED = {"mse", "fid", "kid"}  # record fields that hold a result of the arithmetic
CHECKPOINT_STAMPS = {"git_commit", "ddim_version", "metadata_sha256", "tensors_sha256"}
CHARTS = {"table/fid_vs_steps.png"}  # drawn text and lines: their size is golden, not pixels
DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d+(?:e[+-]?\d+)?(?![\w.])")

# uint8 images: a value may move by one level where a float crosses a .5 before rounding. Measured:
# at most one value of an output moved (1 of 576, 0.2 %), never by two levels; 2 % allows three of
# a single 8×8 PNG's 192 values and eleven of three images' 576.
IMAGE_SHARE_MOVED = 0.02
# Floats (latents, the API's tensors, a checkpoint's sums): |now - golden| <= atol + rtol |golden|
# elementwise. Measured: |d| <= 2.3e-4 (1 + |golden|) at worst (api/reconstruct, whose untrained
# network amplifies: values up to 271), latents 1.8e-6; 2e-3 leaves a margin of 9 over the worst.
FLOAT_TOLERANCE = {"rtol": 2e-3, "atol": 2e-3}
# Numbers a record measured: an MSE (measured: 26.2 moved by 6.7e-6 at most), a FID of uint8
# images (it moves by 1/576 per value of a cell that moves a level), a decimal printed to 4 places
# (measured: moved by one unit in its last place; atol allows two).
MEASURED_TOLERANCE = {"rtol": 1e-3, "atol": 2e-4}

DATA = Path(__file__).parent / "data"
RECORDS = DATA / "command_outputs.json"
ARRAYS = DATA / "command_outputs"


@dataclass
class Outputs:
    """Every output, as records (compared exactly) and arrays (within tolerances); `exact`
    holds digests that only the exact mode compares (a chart's pixels)."""

    records: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    exact: dict[str, str] = field(default_factory=dict)


# --- making the outputs ---------------------------------------------------------------------------


def write_inputs(folder: Path) -> None:
    """The tiny checkpoint, six random 8×8 images (.npz and two PNGs), FID reference stats."""
    from ddim.evaluation import CONVENTION, FidStats, network_sha256, save_stats

    save_tiny_checkpoint(folder / "tiny.safetensors")
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(folder / "data.npz", arr_0=pixels)
    Image.fromarray(pixels[0]).save(folder / "a.png")
    Image.fromarray(pixels[1]).save(folder / "b.png")
    stats = FidStats(np.zeros(4), np.eye(4), 10, network_sha256(), CONVENTION, "fake")
    save_stats(stats, folder / "ref.npz")


def _stub_scores(cells: list[np.ndarray]):
    """A `compute_scores` that keeps the images it is given and returns their mean as the FID
    (and no KID: the reference keeps no features)."""
    from ddim.evaluation import Scores

    def compute_scores(images, ref, **_):
        batches = torch.cat(list(images))
        cells.append(batches.numpy().copy())
        return Scores(float(batches.double().mean()), None)

    return compute_scores


def run_commands() -> dict[str, np.ndarray]:
    """Run every command line of RUNS here; the images of each table cell, as scored."""
    import ddim.evaluation.scoring
    from ddim.cli import main

    cells: list[np.ndarray] = []
    real_scores = ddim.evaluation.scoring.compute_scores
    ddim.evaluation.scoring.compute_scores = _stub_scores(cells)
    try:
        for argvs in RUNS.values():
            for argv in argvs:
                with contextlib.redirect_stdout(io.StringIO()):
                    code = main(argv)
                if code != 0:
                    raise RuntimeError(f"ddim {' '.join(argv)} exited with {code}")
    finally:
        ddim.evaluation.scoring.compute_scores = real_scores
    return {f"table/cell-{k}-images": images for k, images in enumerate(cells)}


def api_outputs() -> dict[str, np.ndarray]:
    """The README's Python API on the tiny checkpoint, each result as an array."""
    import ddim

    net, config = ddim.load_model("tiny.safetensors")
    eps_model = lambda x, t: net(x, t)  # noqa: E731
    betas = config.diffusion.betas()
    x_T = ddim.randn((3, 3, 8, 8), torch.Generator().manual_seed(0))
    gens = ddim.generators_from_seeds(range(3))
    x_0 = ddim.sample(eps_model, x_T, betas, steps=5, skip="quad", eta=0.0)
    z = ddim.encode(eps_model, x_0, betas, steps=5)
    oracle = ddim.GaussianOracle(torch.full((3, 8, 8), 0.25), torch.full((3, 8, 8), 0.5), betas)
    results = {
        "make_betas": ddim.make_betas("linear", 1000, 1e-4, 0.02),
        "timesteps": torch.tensor(ddim.timesteps(1000, 100, "quad")),
        "timesteps_logsnr": torch.tensor(ddim.timesteps(1000, 10, "logsnr", betas=betas)),
        "randn": x_T,
        "sample": x_0,
        "sample_eta": ddim.sample(eps_model, ddim.randn((3, 3, 8, 8), gens), betas, steps=4,
                                  eta=1.0, generator=gens),
        "sample_ddpm": ddim.sample_ddpm(eps_model, x_T, betas, steps=6, variance="large",
                                        generator=torch.Generator().manual_seed(1)),
        "sample_dpmpp_2m": ddim.sample_dpmpp_2m(eps_model, x_T, betas, steps=6, skip="logsnr"),
        "to_uint8": ddim.to_uint8(x_0),
        "encode": z,
        "reconstruct": ddim.reconstruct(eps_model, x_0, betas, steps=3, skip="trailing"),
        "slerp": ddim.slerp(z[0:1], z[1:2], 0.5),
        "interpolate": ddim.interpolate(eps_model, x_0[0], x_0[1], betas, steps=3, num=4),
        "oracle": oracle(x_T, torch.tensor([0, 500, 999])),
    }
    return {f"api/{name}": value.detach().cpu().numpy() for name, value in results.items()}


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


def collect_outputs(folder: Path) -> Outputs:
    """Make every output of RUNS and the API in `folder`; its records and arrays."""
    folder = Path(folder).resolve()
    with _inside(folder):
        write_inputs(folder)
        arrays = run_commands()
        arrays.update(api_outputs())
    outputs = Outputs(arrays=arrays)
    files = [p for name in RUNS for p in sorted((folder / name).rglob("*"))
             if p.is_file() and p.suffix != ".lock"]  # fmt: skip
    made = [p for p in files if p.suffix == ".safetensors"]
    replace = {_sha(p.read_bytes()): f"<sha256 of {p.relative_to(folder)}>"
               for p in [*(folder / name for name in INPUTS), *made]}  # fmt: skip
    replace[str(folder)] = "<folder>"
    for path in files:
        _read_output(path, str(path.relative_to(folder)), replace, outputs)
    outputs.records = json.loads(json.dumps(outputs.records))  # as the JSON file gives them back
    outputs.arrays = dict(sorted(outputs.arrays.items()))
    return outputs


# --- reading one output ---------------------------------------------------------------------------


def _read_output(path: Path, key: str, replace: dict[str, str], outputs: Outputs) -> None:
    """Add the record and arrays of the output file `path` (named `key`) to `outputs`."""
    if path.suffix == ".json":
        _add_record(key, json.loads(path.read_text()), replace, outputs)
    elif path.suffix == ".md":
        text = path.read_text()
        if path.name == "reconstruct.md":  # its last column is seconds
            text = re.sub(r"\| [0-9.]+ \|\n", "| s |\n", text)
        outputs.arrays[f"{key}:measured"] = np.array(DECIMAL.findall(text), dtype=np.float64)
        outputs.records[key] = DECIMAL.sub("<x>", text)
    elif path.suffix == ".png" and key in CHARTS:
        with Image.open(path) as image:
            outputs.records[key] = {"size": list(image.size), "mode": image.mode}
            outputs.exact[key] = _sha(np.asarray(image).tobytes())
    elif path.suffix == ".png":
        with Image.open(path) as image:
            outputs.arrays[key] = np.asarray(image)
    elif path.suffix == ".npz":
        with np.load(path) as arrays:
            for name in arrays.files:
                if arrays[name].dtype.kind == "U":  # a JSON record stored as a string
                    _add_record(f"{key}:{name}", json.loads(str(arrays[name])), replace, outputs)
                else:
                    outputs.arrays[f"{key}:{name}"] = arrays[name]
    elif path.suffix == ".safetensors":
        _add_checkpoint(path, key, replace, outputs)
    else:
        raise ValueError(f"no rule for the output {key}")


def _add_record(key: str, value, replace: dict[str, str], outputs: Outputs) -> None:
    """A JSON record, normalised, and the numbers it measured."""
    measured: list[float] = []
    outputs.records[key] = _clean(value, replace, measured)
    if measured:
        outputs.arrays[f"{key}:measured"] = np.array(measured, dtype=np.float64)


def _add_checkpoint(path: Path, key: str, replace: dict[str, str], outputs: Outputs) -> None:
    """A checkpoint: its metadata without build stamps and its tensors' names, dtypes and
    shapes as the record; each tensor's sum and sum of squares (float64) as an array."""
    from safetensors import safe_open

    with safe_open(path, "np") as checkpoint:
        metadata = {name: json.loads(text) for name, text in checkpoint.metadata().items()
                    if name not in CHECKPOINT_STAMPS}  # fmt: skip
        names = sorted(checkpoint.keys())
        tensors = [checkpoint.get_tensor(name) for name in names]
    outputs.records[key] = {
        "metadata": _clean(metadata, replace, []),
        "tensors": {n: [t.dtype.name, list(t.shape)] for n, t in zip(names, tensors)},
    }
    sums = [[t.astype(np.float64).sum(), np.square(t.astype(np.float64)).sum()] for t in tensors]
    outputs.arrays[f"{key}:tensor sums"] = np.array(sums, dtype=np.float64)


def _clean(value, replace: dict[str, str], measured: list[float], within: str = ""):
    """A JSON value without timings, file stamps or whole configs; input digests named; the
    numbers of MEASURED fields moved to `measured` (in order) and shown as "<x>"."""
    if isinstance(value, dict):
        if {"model", "diffusion", "data", "training", "sampling"} <= value.keys():
            return "<config>"
        fingerprint = {"kind", "items"} <= value.keys()  # a dataset fingerprint
        return {
            key: _clean(item, replace, measured, key if key in MEASURED else within)
            for key, item in value.items()
            if key not in TIMINGS and not (fingerprint and key in ("files", "path"))
        }
    if isinstance(value, list):
        return [_clean(item, replace, measured, within) for item in value]
    if isinstance(value, float) and within:
        measured.append(value)
        return "<x>"
    if isinstance(value, str):
        if value.startswith("{") and value.endswith("}"):
            with contextlib.suppress(ValueError):
                return {"json": _clean(json.loads(value), replace, measured, within)}
        return replace.get(value, value)
    return value


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- comparing ------------------------------------------------------------------------------------


def compare_outputs(now: Outputs, golden: Outputs) -> list[str]:
    """Every way `now` departs from `golden` beyond the tolerances, one line each."""
    problems = []
    for kind, new, old in (("record", now.records, golden.records),
                           ("array", now.arrays, golden.arrays)):  # fmt: skip
        problems += [f"{key}: a {kind} made now and not recorded" for key in new.keys() - old]
        problems += [f"{key}: a recorded {kind} not made now" for key in old.keys() - new]
    for key in sorted(now.records.keys() & golden.records.keys()):
        if now.records[key] != golden.records[key]:
            where = ", ".join(_differences(now.records[key], golden.records[key])[:5])
            problems.append(f"{key}: the record differs at {where}")
    for key in sorted(now.arrays.keys() & golden.arrays.keys()):
        problem = array_difference(key, now.arrays[key], golden.arrays[key])
        if problem:
            problems.append(f"{key}: {problem}")
    return problems


def array_difference(key: str, now: np.ndarray, golden: np.ndarray) -> str | None:
    """Why `now` is not `golden` within the tolerance of its kind (see the module docstring),
    or None."""
    if now.dtype != golden.dtype or now.shape != golden.shape:
        return f"{now.dtype}{now.shape} now, {golden.dtype}{golden.shape} recorded"
    if now.dtype == np.uint8:
        levels = np.abs(now.astype(np.int16) - golden.astype(np.int16))
        moved, allowed = int((levels > 0).sum()), int(IMAGE_SHARE_MOVED * levels.size)
        if levels.max(initial=0) > 1 or moved > allowed:
            return (f"{moved} of {levels.size} values differ (at most {allowed} may, by one "
                    f"level), by up to {int(levels.max())} levels")  # fmt: skip
        return None
    if now.dtype.kind != "f":
        return None if np.array_equal(now, golden) else "values differ (compared exactly)"
    tolerance = MEASURED_TOLERANCE if key.endswith(":measured") else FLOAT_TOLERANCE
    close = np.isclose(now, golden, **tolerance)
    if close.all():
        return None
    worst = np.unravel_index(np.argmax(np.abs(now - golden) * ~close), now.shape)
    return (f"{int((~close).sum())} of {now.size} values beyond rtol {tolerance['rtol']}, atol "
            f"{tolerance['atol']}: {now[worst].item()!r} now, {golden[worst].item()!r} recorded "
            f"at {tuple(int(k) for k in worst)}")


def _differences(now, golden, where: str = "") -> list[str]:
    """Where two JSON values differ, as paths ("." for the whole value)."""
    if isinstance(now, dict) and isinstance(golden, dict):
        pairs = [(now.get(k), golden.get(k), f"{where}.{k}") for k in sorted(now | golden)]
        return [path for a, b, at in pairs for path in _differences(a, b, at)]
    if isinstance(now, list) and isinstance(golden, list) and len(now) == len(golden):
        return [path for k, (a, b) in enumerate(zip(now, golden))
                for path in _differences(a, b, f"{where}[{k}]")]  # fmt: skip
    if isinstance(now, str) and isinstance(golden, str) and "\n" in now + golden:
        lines = zip(now.splitlines(), golden.splitlines())
        first = next((k for k, (a, b) in enumerate(lines) if a != b), None)
        return [f"{where or '.'} line {first + 1 if first is not None else 'count'}"]
    return [] if now == golden else [where or "."]


# --- the golden data and the exact mode -----------------------------------------------------------


def save_golden(outputs: Outputs, records: Path = RECORDS, arrays: Path = ARRAYS) -> None:
    """Write the records as one JSON file and each run's arrays as `arrays`/RUN.npz, with fixed
    zip dates, so that the same arrays make the same bytes."""
    records.write_text(json.dumps(outputs.records, indent=1, sort_keys=True,
                                  ensure_ascii=False) + "\n")  # fmt: skip
    arrays.mkdir(parents=True, exist_ok=True)
    for old in arrays.glob("*.npz"):
        old.unlink()
    by_run: dict[str, dict[str, np.ndarray]] = {}
    for key, array in outputs.arrays.items():
        run, _, member = key.partition("/")
        by_run.setdefault(run, {})[member] = array
    for run, members in by_run.items():
        with zipfile.ZipFile(arrays / f"{run}.npz", "w", zipfile.ZIP_DEFLATED) as archive:
            for member, array in sorted(members.items()):
                data = io.BytesIO()
                np.lib.format.write_array(data, np.ascontiguousarray(array), allow_pickle=False)
                info = zipfile.ZipInfo(f"{member}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                archive.writestr(info, data.getvalue(), zipfile.ZIP_DEFLATED)


def load_golden(records: Path = RECORDS, arrays: Path = ARRAYS) -> Outputs:
    """The golden records and arrays as `save_golden` wrote them."""
    golden = Outputs(records=json.loads(records.read_text()))
    for path in sorted(arrays.glob("*.npz")):
        with np.load(path, allow_pickle=False) as members:
            golden.arrays.update({f"{path.stem}/{m}": members[m] for m in members.files})
    return golden


def digests(outputs: Outputs) -> dict[str, str]:
    """SHA-256 of every output: records as sorted JSON, arrays by dtype, shape and bytes."""
    found = {key: _sha(json.dumps(value, sort_keys=True).encode())
             for key, value in outputs.records.items()}  # fmt: skip
    for key, array in outputs.arrays.items():
        array = np.ascontiguousarray(array)
        found[key] = _sha(f"{array.dtype}{array.shape}".encode() + array.tobytes())
    found.update({f"{key}:pixels": digest for key, digest in outputs.exact.items()})
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> int:
    """Record the golden data, or record or compare this machine's exact digests."""
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", action="store_true", help="rewrite the golden data")
    mode.add_argument("--digests", type=Path, metavar="OUT.json", help="write exact digests")
    mode.add_argument("--compare", type=Path, metavar="OUT.json", help="compare with them")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        outputs = collect_outputs(Path(tmp))
    if args.record:
        save_golden(outputs)
        print(f"{len(outputs.records)} records and {len(outputs.arrays)} arrays in {DATA}")
        return 0
    now = digests(outputs)
    if args.digests:
        args.digests.write_text(json.dumps(now, indent=1) + "\n")
        print(f"{len(now)} digests in {args.digests}")
        return 0
    before = json.loads(args.compare.read_text())
    changed = [f"changed: {k}" for k in sorted(now.keys() & before.keys()) if now[k] != before[k]]
    changed += [f"new: {k}" for k in sorted(now.keys() - before.keys())]
    changed += [f"missing: {k}" for k in sorted(before.keys() - now.keys())]
    print("\n".join(changed) or f"all {len(now)} outputs as in {args.compare}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
