"""Fashion-MNIST, the image demo's data: 70,000 28 x 28 grey pictures of 10 kinds of clothing,
as Debian's `dataset-fashion-mnist` package ships them (IDX files).

The installed package (/usr/share/datasets/fashion-mnist) is used when it is there; else its
.deb is fetched from Debian's archive once, checked against the SHA-256 below, and the four
IDX files are unpacked into edgekd's cache. Every file is checked against its own SHA-256
whenever it is read, so a damaged cache is refetched rather than trusted.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgekd.config import cache_dir
from edgekd.errors import UserError, exclusive

INSTALLED = Path("/usr/share/datasets/fashion-mnist")
PACKAGE = {"Filename": "pool/main/d/dataset-fashion-mnist/dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
           "SHA256": "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"}
FILES = {  # the package's IDX files and their SHA-256
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
LABEL_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]


def folder(*, log=print) -> Path:
    """A folder holding the four verified IDX files: the installed package's, else the cache's."""
    if all(_verified(INSTALLED / name, digest) for name, digest in FILES.items()):
        return INSTALLED
    cached = cache_dir() / "fashion-mnist"
    if all(_verified(cached / name, digest) for name, digest in FILES.items()):
        return cached
    with exclusive(cached.parent / "fashion-mnist.fetch", wait=True, what="Fashion-MNIST download"):
        if not all(_verified(cached / name, digest) for name, digest in FILES.items()):
            _fetch(cached, log=log)
    return cached


def _verified(path: Path, digest: str) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest() == digest


def _fetch(destination: Path, *, log) -> None:
    from edgekd.arm64 import MIRROR, fetch_deb, unpack_deb

    log(f"fetching Fashion-MNIST (Debian's dataset-fashion-mnist, 31 MB) into {destination}")
    with tempfile.TemporaryDirectory(prefix="edgekd-fashion-mnist-") as scratch:
        scratch = Path(scratch)
        deb = fetch_deb(PACKAGE, scratch)
        unpack_deb(deb, scratch / "root")
        unpacked = scratch / "root" / INSTALLED.relative_to("/")
        staging = destination.with_name(destination.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name, digest in FILES.items():
            if not _verified(unpacked / name, digest):
                raise UserError(f"{name} in Debian's dataset-fashion-mnist does not match its SHA-256; "
                                f"the mirror ({MIRROR}) serves another file: set EDGEKD_DEBIAN_MIRROR")
            shutil.copyfile(unpacked / name, staging / name)
        shutil.rmtree(destination, ignore_errors=True)
        staging.rename(destination)


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (gzip-compressed): unsigned bytes, big-endian dimension sizes."""
    data = gzip.decompress(path.read_bytes())
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes; delete it to fetch it again")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(split: str, *, log=print) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,)) of the train (60,000) or test (10,000) split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = folder(log=log)
    return (read_idx(root / f"{prefix}-images-idx3-ubyte.gz"), read_idx(root / f"{prefix}-labels-idx1-ubyte.gz"))
