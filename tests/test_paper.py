import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddim.checkpoint import load_model
from ddim.cli import main
from ddim.data import to_model_range
from ddim.diffusion.samplers import reconstruct, slerp_path
from ddim.diffusion.schedule import make_betas
from ddim.errors import DdimError
from ddim.experiments import paper as ex
from ddim.experiments.report import Panel, plot_points, save_plot
from ddim.network.precision import eps_model_for
from ddim.sampling import build_sampler


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    net, config = load_model(tiny_checkpoint)
    return eps_model_for(net), config, config.diffusion.betas()


@pytest.fixture(scope="module")
def data_npz(tmp_path_factory):
    """Six random 8×8 RGB images as an NHWC uint8 .npz."""
    path = tmp_path_factory.mktemp("data") / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(path, arr_0=rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    return path


def cell(grid: np.ndarray, row: int, col: int, size: int = 8, pad: int = 2) -> np.ndarray:
    """Image (row, col) of a `save_grid` PNG as HWC uint8."""
    top, left = pad + row * (size + pad), pad + col * (size + pad)
    return grid[top : top + size, left : left + size]


# --- library -----------------------------------------------------------------------------------


def test_reconstruction_mse_closed_form():
    x = torch.zeros(2, 3, 4, 4)
    assert ex.reconstruction_mse(x, x + 0.2) == pytest.approx(0.01)  # (0.6 − 0.5)²
    x_rec = torch.full_like(x, -1.0)
    x_rec[0] = 1.0  # half the images off by 1 on the [0, 1] scale, half by 0.5 … squared
    assert ex.reconstruction_mse(x, x_rec) == pytest.approx((0.25 + 0.25) / 2)


def test_reconstruction_study_matches_direct_computation(model, data_npz):
    eps_model, config, betas = model
    images = torch.from_numpy(np.load(data_npz)["arr_0"][:4]).permute(0, 3, 1, 2)
    samplers = [build_sampler(betas, S, eta=0.0) for S in (2, 3)]
    rows, recs = ex.reconstruction_study(eps_model, images, samplers, batch=3, device="cpu")
    x = images.double() / 127.5 - 1
    for row, rec, S in zip(rows, recs, [2, 3]):
        x_rec = reconstruct(eps_model, to_model_range(images), betas, steps=S).double()
        direct = (((x_rec + 1) / 2 - (x + 1) / 2) ** 2).mean().item()
        assert row["mse"] == pytest.approx(direct, rel=1e-5)
        assert row["network_calls"] == 2 * S and row["steps"] == S
        assert rec.dtype == torch.uint8 and rec.shape == images.shape


def test_slerp_path_ends_are_the_latents():
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    path = slerp_path(z[0], z[1], 5)
    assert path.shape == (5, 3, 8, 8)
    assert torch.equal(path[0], z[0]) and torch.equal(path[-1], z[1])
    with pytest.raises(DdimError, match="num >= 2 images, got 1"):
        slerp_path(z[0], z[1], 1)


def test_table_cells_resume_and_render(tmp_path):
    from ddim.evaluation import Kid, Scores

    betas = make_betas("linear", 1000)
    rows = ex.table_rows([0.0, 1.0], sigma_hat=True, dpmpp_2m=True)
    cells = ex.table_cells(betas, [2, 1000], rows, "quad")
    assert [c.key for c in cells[:4]] == ["eta=0.0,S=2", "eta=1.0,S=2", "sigma_hat,S=2",
                                          "dpmpp_2m,S=2"]  # fmt: skip
    last = cells[-2].sampler
    assert last.skip == "uniform" and last.option == ("variance", "large")  # S = T: all steps
    assert cells[0].sampler.timesteps is cells[2].sampler.timesteps  # τ once per column
    assert cells[0].sampler.timesteps is cells[3].sampler.timesteps  # 2M walks DDIM's τ
    assert cells[2].sampler_record() == {"steps": 2, "skip": "quad", "eta": 0.0, "kind": "ddpm",
                                         "variance": "large", "clip_x0": True}  # clipping as it ran
    assert cells[3].sampler_record()["kind"] == "dpmpp-2m" and cells[3].sampler.option is None
    calls = []

    def score(sampler):
        calls.append((sampler.name, sampler.steps))
        fid = 10.0 * sampler.steps + dict([sampler.option] if sampler.option else []).get("eta", 0)
        kid = Kid(0.00125, 0.0005, 3, 100) if sampler.name == "dpmpp-2m" else None
        return Scores(fid, kid)

    saved = []
    record = ex.run_table(cells, score, {"settings": {"n": 4}}, saved.append)
    assert len(calls) == 8 and len(saved) == 8
    assert record["cells"]["eta=1.0,S=2"]["fid"] == 21.0
    assert record["cells"]["eta=1.0,S=2"]["kid"] is None
    assert record["cells"]["dpmpp_2m,S=2"]["kid"] == {"mean": 0.00125, "std": 0.0005,
                                                      "subset_size": 3, "n_subsets": 100}
    assert record["cells"]["sigma_hat,S=1000"]["network_calls_per_image"] == 1000
    (tmp_path / "table.json").write_text(json.dumps(record))
    again = ex.resume_record(tmp_path / "table.json", {"n": 4})
    found = []
    ex.run_table(cells, score, again, saved.append, progress=lambda key, done: found.append(done))
    assert len(calls) == 8 and found == [True] * 8  # nothing recomputed, all found done
    assert ex.resume_record(tmp_path / "table.json", {"n": 8})["cells"] == {}
    md = ex.table_markdown(record)
    assert "| η = 0.0 | 20.00 | 10000.00 (4.04) |" in md
    assert "| σ̂ | 20.00 | 10000.00 (3.17) |" in md
    assert "| DPM-Solver++(2M) | 20.00 · 1.25 ± 0.50 | 10000.00 · 1.25 ± 0.50 |" in md
    assert md.index("| σ̂ |") < md.index("| DPM-Solver++(2M) |")
    assert "KID × 10³ (Bińkowski et al. 2018): mean ± std over 100 subsets of 3 features" in md
    assert ex.table_series(record)["DPM-Solver++(2M)"] == [(2.0, 20.0), (1000.0, 10000.0)]
    assert ex.table_series(record, ex.cell_kid) == {"DPM-Solver++(2M)": [(2.0, 1.25),
                                                                         (1000.0, 1.25)]}
    save_plot(Panel(ex.table_series(record), title="FID"), tmp_path / "plot.png")
    assert Image.open(tmp_path / "plot.png").size == (640, 420)
    save_plot([Panel(ex.table_series(record))] * 2, tmp_path / "two.png")
    assert Image.open(tmp_path / "two.png").size == (1280, 420)


def test_a_table_without_kid_says_why(tmp_path):
    from ddim.evaluation import Scores

    cells = ex.table_cells(make_betas("linear", 1000), [2], ex.table_rows([0.0]), "uniform")
    record = {"settings": {}, "kid_unavailable": "ref.npz holds no Inception features (made "
              "before KID), so no KID; rebuild it with `ddim fid ref DATA -o ref.npz`"}
    record = ex.run_table(cells, lambda sampler: Scores(5.0, None), record, lambda r: None)
    md = ex.table_markdown(record)
    assert "| η = 0.0 | 5.00 |" in md
    assert "KID unavailable: ref.npz holds no Inception features" in md
    assert "rebuild it with `ddim fid ref DATA -o ref.npz`" in md


def test_plot_uses_a_log_x_axis():
    px = plot_points(Panel({"a": [(10, 1.0), (100, 1.0), (1000, 2.0)]}))["a"]
    assert px[1][0] - px[0][0] == pytest.approx(px[2][0] - px[1][0], abs=1)
    assert px[0][1] == px[1][1] > px[2][1]  # larger FID is higher on the image


def test_paper_table_transcription_agrees_with_the_papers_findings():
    """The transcribed Table 1 must show what the paper reports about it: every row improves with
    S, η = 0 is best for S ≤ 100 and η rows are ordered by η, σ̂ is worst at S = 10 and best at
    S = 1000. A typo in a cell breaks one of these."""
    table, steps = ex.PAPER_TABLE1_CIFAR10, ex.PAPER_STEPS
    assert steps == (10, 20, 50, 100, 1000) and all(len(v) == len(steps) for v in table.values())
    for row in table.values():
        assert all(a > b for a, b in zip(row, row[1:])), row
    etas = ["eta=0.0", "eta=0.2", "eta=0.5", "eta=1.0"]
    for k in range(len(steps)):
        column = [table[r][k] for r in etas]
        assert column == sorted(column)  # more noise, worse FID, at every S
        if steps[k] <= 100:
            assert table["eta=0.0"][k] < table["sigma_hat"][k]
    assert table["sigma_hat"][0] == max(row[0] for row in table.values())
    assert table["sigma_hat"][-1] == min(row[-1] for row in table.values())
    assert ex.PAPER_TABLE1_CIFAR10["sigma_hat"][-1] == 3.17


# --- commands, end to end ----------------------------------------------------------------------


def test_encode_command(tiny_checkpoint, data_npz, tmp_path):
    out = tmp_path / "lat.npz"
    argv = ["encode", "--ckpt", str(tiny_checkpoint), "--images", str(data_npz), "--n", "5",
            "--steps", "2", "--batch", "3", "-o", str(out)]
    assert main(argv) == 0
    with np.load(out) as f:
        assert f["latents"].shape == (5, 3, 8, 8) and f["latents"].dtype == np.float32
        assert f["indices"].tolist() == [0, 1, 2, 3, 4]
        settings = json.loads(str(f["settings"]))
    assert settings["steps"] == 2 and settings["timesteps"] == [0, 500]


def test_reconstruct_command(tiny_checkpoint, data_npz, tmp_path, capsys):
    argv = ["reconstruct", "--ckpt", str(tiny_checkpoint), "--images", str(data_npz), "--n", "3",
            "--steps", "1", "2", "-o", str(tmp_path)]
    assert main(argv) == 0
    assert "| S | MSE |" in capsys.readouterr().out
    record = json.loads((tmp_path / "reconstruct.json").read_text())
    assert [r["steps"] for r in record["results"]] == [1, 2] and record["n"] == 3
    assert (tmp_path / "reconstruct.md").exists()
    assert Image.open(tmp_path / "reconstruct.png").size == (3 * 10 + 2, 3 * 10 + 2)


def test_interpolate_seed_ends_equal_sample_images(tiny_checkpoint, tmp_path):
    strip = tmp_path / "strip.png"
    argv = ["interpolate", "--ckpt", str(tiny_checkpoint), "--seeds", "3", "7", "--num", "4",
            "--steps", "3", "-o", str(strip)]
    assert main(argv) == 0
    grid = np.asarray(Image.open(strip))
    assert grid.shape == (12, 42, 3)
    for seed, col in [(3, 0), (7, 3)]:
        out = tmp_path / f"s{seed}"
        argv = ["sample", "--ckpt", str(tiny_checkpoint), "--seed", str(seed), "--n", "1",
                "--steps", "3", "-o", str(out)]
        assert main(argv) == 0
        assert np.array_equal(np.load(out / "samples.npz")["arr_0"][0], cell(grid, 0, col))
    assert json.loads(strip.with_suffix(".json").read_text())["seeds"] == [3, 7]


def test_interpolate_images_from_files_and_dataset(tiny_checkpoint, data_npz, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    pixels = np.load(data_npz)["arr_0"]
    Image.fromarray(pixels[0]).save(a)
    Image.fromarray(pixels[1]).save(b)
    common = ["interpolate", "--ckpt", str(tiny_checkpoint), "--num", "3", "--steps", "2"]
    assert main([*common, "--images", str(a), str(b), "-o", str(tmp_path / "f.png")]) == 0
    argv = [*common, "--images", str(data_npz), "--indices", "0", "1", "2", "3",
            "-o", str(tmp_path / "d.png")]
    assert main(argv) == 0
    files = np.asarray(Image.open(tmp_path / "f.png"))
    data = np.asarray(Image.open(tmp_path / "d.png"))
    assert data.shape == (22, 32, 3)  # two pairs, two rows
    assert np.array_equal(files, data[:12])  # the same two images, read two ways


def test_trajectory_grid_shape(tiny_checkpoint, tmp_path):
    out = tmp_path / "traj.png"
    argv = ["trajectory", "--ckpt", str(tiny_checkpoint), "--seed", "1", "--steps", "2", "4",
            "--show", "3", "-o", str(out)]
    assert main(argv) == 0
    # rows: S = 2 shows steps [0, 1] + final; S = 4 shows [0, 2, 3] + final → 4 columns
    assert Image.open(out).size == (4 * 10 + 2, 2 * 10 + 2)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["shown_step_indices"] == {"2": [0, 1], "4": [0, 2, 3]}


def fake_reference(path):
    """A stats file that passes the compatibility check, made without running Inception."""
    from ddim.evaluation import CONVENTION, FidStats, network_sha256, save_stats

    stats = FidStats(np.zeros(4), np.eye(4), 10, network_sha256(), CONVENTION, "fake")
    return save_stats(stats, path)


def fake_features(batches) -> np.ndarray:
    """Four features of each uint8 image, standing in for Inception's 2048 (no network run)."""
    x = torch.cat(list(batches)).double() / 255
    return torch.stack([x.mean((1, 2, 3)), x[:, 0].mean((1, 2)), x[:, 1].std((1, 2)),
                        x[:, 2].amax((1, 2))], 1).numpy()  # fmt: skip


def test_table_command_scores_fid_and_kid_of_every_row(tiny_checkpoint, tmp_path, monkeypatch):
    """The real scoring (`compute_scores`) on features of a stand-in network: each cell's FID
    and KID are those of its images' features against the reference's, computed directly."""
    from ddim import evaluation

    seen = []

    def features(images, **_):
        seen.append(fake_features(images))
        return seen[-1]

    monkeypatch.setattr(evaluation.inception, "inception_features", features)
    ref_features = np.random.default_rng(0).normal(0.5, 0.1, (10, 4))
    ref = evaluation.save_stats(
        evaluation.stats_from_features(ref_features, source="fake", resolution=8),
        tmp_path / "ref.npz")  # fmt: skip
    out = tmp_path / "table"
    argv = ["table", "--ckpt", str(tiny_checkpoint), "--ref", str(ref), "--n", "3", "--batch",
            "2", "--steps", "1", "2", "--etas", "0", "1", "--sigma-hat", "--dpmpp-2m", "-o",
            str(out)]  # fmt: skip
    assert main(argv) == 0
    assert len(seen) == 8 and all(f.shape == (3, 4) for f in seen)
    record = json.loads((out / "table.json").read_text())
    stats = evaluation.load_stats(ref)
    for cell, f in zip(record["cells"].values(), seen, strict=True):  # in the order scored
        assert cell["fid"] == evaluation.frechet_distance(*evaluation.statistics(f), stats.mu,
                                                          stats.sigma)  # fmt: skip
        assert cell["kid"] == evaluation.kernel_inception_distance(f, stats.features)._asdict()
        assert cell["kid"]["subset_size"] == 3  # min(1000, N, reference features)
    two = record["cells"]["dpmpp_2m,S=2"]
    assert two["sampler"]["kind"] == "dpmpp-2m"
    assert two["timesteps"] == record["cells"]["eta=0.0,S=2"]["timesteps"]
    settings = record["settings"]
    assert len(record["cells"]) == 8 and settings["skip"] == "quad"  # tiny is CIFAR10
    assert settings["reference"]["n"] == 10 and len(settings["reference"]["sha256"]) == 64
    assert settings["provenance"] == {"kind": "ddim", "weights": "ema", "config": "recorded"}
    assert settings["seeds"] == [0, 2] and record["kid_unavailable"] is None
    assert settings["precision"].startswith(("fp32", "bf16"))  # the path is recorded
    assert record["cells"]["sigma_hat,S=2"]["sampler"]["variance"] == "large"
    table = (out / "table.md").read_text()
    kid = record["cells"]["dpmpp_2m,S=1"]["kid"]
    assert f"| DPM-Solver++(2M) | {record['cells']['dpmpp_2m,S=1']['fid']:.2f} · " \
           f"{kid['mean'] * 1e3:.2f} ± {kid['std'] * 1e3:.2f} |" in table
    assert "| σ̂ |" in table and "mean ± std over 100 subsets of 3 features per set" in table
    assert Image.open(out / "fid_vs_steps.png").size == (1280, 420)  # FID and KID panels
    assert main(argv) == 0 and len(seen) == 8  # resumed: nothing recomputed
    before = (out / "table.json").read_text()
    assert main([*argv[:-2], "--raw", "-o", str(out)]) == 2  # other weights: refused, kept
    assert (out / "table.json").read_text() == before and len(seen) == 8
    assert main([*argv[:-2], "--raw", "-o", str(out), "--overwrite"]) == 0 and len(seen) == 16


def test_a_table_against_a_reference_without_features_says_how_to_rebuild_it(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    from ddim import evaluation

    monkeypatch.setattr(evaluation.inception, "inception_features",
                        lambda images, **_: fake_features(images))
    ref = fake_reference(tmp_path / "ref.npz")  # mu and sigma only, as files made before KID
    out = tmp_path / "table"
    capsys.readouterr()
    with pytest.warns(UserWarning, match="KID unavailable, FID only: .*ref.npz holds no "
                                         "Inception features"):  # fmt: skip
        assert main(["table", "--ckpt", str(tiny_checkpoint), "--ref", str(ref), "--n", "3",
                     "--steps", "1", "--etas", "0", "-o", str(out)]) == 0  # fmt: skip
    record = json.loads((out / "table.json").read_text())
    assert record["cells"]["eta=0.0,S=1"]["kid"] is None and np.isfinite(
        record["cells"]["eta=0.0,S=1"]["fid"])
    assert f"rebuild it with `ddim fid ref DATA -o {ref}`" in record["kid_unavailable"]
    table = (out / "table.md").read_text()
    assert "KID unavailable: " in table and "rebuild it with `ddim fid ref" in table
    assert Image.open(out / "fid_vs_steps.png").size == (640, 420)  # FID only


@pytest.mark.slow
def test_table_command_with_inception(tiny_checkpoint, data_npz, tmp_path):
    from ddim.evaluation import compute_reference

    # Inception costs ~0.1–2 s per image on a CPU, and each FID a 2048² eigen-decomposition:
    # two reference images, one cell of two images
    ref = tmp_path / "ref.npz"
    real = torch.from_numpy(np.load(data_npz)["arr_0"][:2]).permute(0, 3, 1, 2)
    compute_reference(real, ref, source="two random images", progress=False)
    out = tmp_path / "table"
    argv = ["table", "--ckpt", str(tiny_checkpoint), "--ref", str(ref), "--n", "2",
            "--steps", "2", "--etas", "0", "-o", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "table.json").read_text())
    assert set(record["cells"]) == {"eta=0.0,S=2"}
    assert np.isfinite(record["cells"]["eta=0.0,S=2"]["fid"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["interpolate", "--images", "nope.png", "nope2.png"], "image not found: nope.png"),
        (["interpolate", "--seeds", "1", "2", "--num", "1"], "--num must be >= 2, got 1"),
        (["trajectory", "--steps", "0"], "steps must be between 1 and T = 1000, got 0"),
        (["reconstruct", "--images", "missing_dir", "--steps", "2"], "dataset not found"),
    ],
)
def test_bad_input_is_one_line_exit_2(tiny_checkpoint, tmp_path, capsys, flags, message):
    argv = [flags[0], "--ckpt", str(tiny_checkpoint), *flags[1:], "-o", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_bad_input_in_a_subprocess_has_no_traceback(tiny_checkpoint, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ddim", "encode", "--ckpt", str(tiny_checkpoint), "--images",
         str(tmp_path / "none"), "--steps", "0", "-o", str(tmp_path / "l.npz")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "steps must be between 1 and T = 1000, got 0" in result.stderr


def test_paper_table2_transcription_falls_with_s():
    """Table 2: the reconstruction error falls with S, to 1e-4 (its rounding) at S = 500, 1000."""
    errors = [ex.PAPER_TABLE2_CIFAR10[S] for S in sorted(ex.PAPER_TABLE2_CIFAR10)]
    assert sorted(ex.PAPER_TABLE2_CIFAR10) == [10, 20, 50, 100, 200, 500, 1000]
    assert all(a >= b for a, b in zip(errors, errors[1:])) and errors[-1] == 1e-4
