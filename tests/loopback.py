"""A loopback HTTP server standing in for the sources of named weights and data, and small
stand-ins for what they serve: each test starts its own server on 127.0.0.1 and a free port, so
no test reaches outside the machine.

The server answers GET with Range (206 and Content-Range), can close the connection after some
bytes of a file in its first few answers, can be slowed down, and records every request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from ddim.hub import Source


class Mirror:
    """What the server serves and how; `requests` lists (path, Range header or None)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drops: list[int] = []  # request k closes the connection after drops[k] body bytes
        self.seconds_per_chunk = 0.0
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.url = ""

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the requests for `path` (None: the whole file)."""
        return [rng for p, rng in self.requests if p == path]


def _handler(mirror: Mirror):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            path = self.path.lstrip("/")
            rng = self.headers.get("Range")
            with mirror.lock:
                mirror.requests.append((path, rng))
                drop = mirror.drops.pop(0) if mirror.drops else None
            if path not in mirror.files:
                self.send_error(404)
                return
            data, start = mirror.files[path], 0
            if rng:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if drop is not None:
                body = body[:drop]
            try:
                for k in range(0, len(body), 4096):
                    self.wfile.write(body[k : k + 4096])
                    time.sleep(mirror.seconds_per_chunk)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: its business
                return
            if drop is not None:
                self.wfile.flush()
                self.close_connection = True

    return Handler


@pytest.fixture
def mirror(monkeypatch, tmp_path):
    """A running loopback mirror (DDIM_MIRROR points at it) and a fresh cache (DDIM_CACHE)."""
    state = Mirror()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("DDIM_MIRROR", state.url)
    monkeypatch.setenv("DDIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DDIM_OFFLINE", raising=False)
    state.stop = lambda: (server.shutdown(), server.server_close())
    yield state
    server.shutdown()
    server.server_close()


def stand_in(source: Source, data: bytes, **changes) -> Source:
    """`source` with the checksum (and size, if it has one) of the stand-in `data`."""
    md5 = hashlib.md5(data).hexdigest()
    size = len(data) if source.size is not None else None
    return dataclasses.replace(source, md5=md5, size=size, **changes)


def cifar_archive(per_batch: int = 4, seed: int = 0) -> bytes:
    """A .tar.gz laid out as the CIFAR-10 python archive, with `per_batch` random images in each
    of its five train batches and its test batch."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
        for name in names:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            batch = {b"data": data, b"labels": list(range(per_batch)), b"batch_label": name}
            _add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
        _add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": []}))
        _add(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def official_weights(seed: int = 0) -> bytes:
    """A small network's weights as the official pretrained files hold them: a plain state dict
    under the official names, torch.save'd (32x32 images, attention at 16x16, 32 groups)."""
    import torch

    from ddim.config import apply_overrides, load_config
    from ddim.network.unet import UNet

    config = apply_overrides(load_config("tiny"), [
        "model.ch=32", "model.ch_mult=[1, 2]", "model.attn_resolutions=[16]",
        "model.num_res_blocks=1", "model.num_groups=32", "data.image_size=32",
    ])  # fmt: skip
    torch.manual_seed(seed)
    net = UNet.from_config(config.model, config.data.image_size)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.getvalue()
