"""The table of named sources: each name's file, where it comes from, and its published checksum.

Two tables, one per kind of name: `WEIGHTS` holds the names `--ckpt` and `--init` take, `DATA`
the names `--data` and `--images` take (so `cifar10` is the DDPM model in one and the dataset in
the other, as the official DDIM code and torchvision name them).

The pretrained weights are the official DDIM code's `--use_pretrained` list (its
`functions/ckpt_util.py`): the DDPM authors' TensorFlow checkpoints converted to PyTorch state
dicts, raw and EMA, with the same sources and MD5 sums; `church_outdoor` is read as `church`
there, and here. The data is the official CIFAR-10 python archive (Krizhevsky 2009) with the MD5
its page publishes. `filename` is the file's name in the cache and under a mirror's base URL.

A source's size is `size` bytes where it is published, else `approx_size` (the network's
parameters at 4 bytes each, which is what a state dict of float32 tensors holds, give or take its
few kilobytes of names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["weights", "data"]


@dataclass(frozen=True)
class Source:
    """One downloadable file: its name, kind, origin URL, MD5, cache file name and size."""

    name: str
    kind: Kind
    url: str
    md5: str
    filename: str
    description: str
    config: str | None = None  # the packaged config the weights were trained with
    size: int | None = None  # exact bytes, where published
    approx_size: int | None = None  # otherwise, about this many bytes

    def size_text(self) -> str:
        """The size for people: "163 MB" exact, or "about 143 MB"."""
        if self.size is not None:
            return f"{self.size / 1e6:.0f} MB"
        return f"about {self.approx_size / 1e6:.0f} MB" if self.approx_size else "unknown size"


_HEIBOX = "https://heibox.uni-heidelberg.de/f/{}/?dl=1"
_CIFAR10_BYTES = 142_985_228  # float32 parameters of the CIFAR-10 U-Net (35.7 M)
_LSUN_BYTES = 454_692_876  # float32 parameters of the 256-px LSUN U-Net (113.7 M)


def _ddpm(name: str, key: str, md5: str, model: str, step: int, config: str, size: int) -> Source:
    """An entry of the official DDIM code's pretrained list (raw weights, or EMA ones)."""
    ema = name.startswith("ema_")
    folder = f"{'ema_' if ema else ''}diffusion_{model}_model"
    weights = "EMA weights" if ema else "raw weights"
    label = {"cifar10": "CIFAR-10"}.get(model, model.replace("lsun_", "LSUN "))
    return Source(
        name=name, kind="weights", url=_HEIBOX.format(key), md5=md5,
        filename=f"{folder}/model-{step}.ckpt", config=config, approx_size=size,
        description=f"DDPM {label} ({weights}, step {step:,}), Ho et al. 2020",
    )  # fmt: skip


WEIGHTS: dict[str, Source] = {
    source.name: source
    for source in (
        _ddpm("cifar10", "869980b53bf5416c8a28", "82ed3067fd1002f5cf4c339fb80c4669",
              "cifar10", 790000, "cifar10", _CIFAR10_BYTES),
        _ddpm("ema_cifar10", "2e4f01e2d9ee49bab1d5", "1fa350b952534ae442b1d5235cce5cd3",
              "cifar10", 790000, "cifar10", _CIFAR10_BYTES),
        _ddpm("lsun_bedroom", "f179d4f21ebc4d43bbfe", "f70280ac0e08b8e696f42cb8e948ff1c",
              "lsun_bedroom", 2388000, "bedroom", _LSUN_BYTES),
        _ddpm("ema_lsun_bedroom", "b95206528f384185889b", "1921fa46b66a3665e450e42f36c2720f",
              "lsun_bedroom", 2388000, "bedroom", _LSUN_BYTES),
        _ddpm("lsun_cat", "fac870bd988348eab88e", "bbee0e7c3d7abfb6e2539eaf2fb9987b",
              "lsun_cat", 1761000, "cat", _LSUN_BYTES),
        _ddpm("ema_lsun_cat", "0701aac3aa69457bbe34", "646f23f4821f2459b8bafc57fd824558",
              "lsun_cat", 1761000, "cat", _LSUN_BYTES),
        _ddpm("lsun_church", "2711a6f712e34b06b9d8", "eb619b8a5ab95ef80f94ce8a5488dae3",
              "lsun_church", 4432000, "church", _LSUN_BYTES),
        _ddpm("ema_lsun_church", "44ccb50ef3c6436db52e", "fdc68a23938c2397caba4a260bc2445f",
              "lsun_church", 4432000, "church", _LSUN_BYTES),
    )  # fmt: skip
}

DATA: dict[str, Source] = {
    "cifar10": Source(
        name="cifar10", kind="data",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a", filename="cifar-10-python.tar.gz",
        size=170_498_071,
        description="CIFAR-10 python archive: 50,000 train and 10,000 test images, 32x32",
    ),  # fmt: skip
}

# Names read as another (the official code reads church_outdoor as church).
ALIASES = {"lsun_church_outdoor": "lsun_church", "ema_lsun_church_outdoor": "ema_lsun_church"}


def weights_source(name: str) -> Source | None:
    """The pretrained weights `name` names (aliases read as their target), or None."""
    return WEIGHTS.get(ALIASES.get(name, name))


def data_source(name: str) -> Source | None:
    """The dataset archive `name` names, or None."""
    return DATA.get(name)
