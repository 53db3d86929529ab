"""A small CNN of ours on Fashion-MNIST (Debian's dataset-fashion-mnist), trained in about a minute.

Contract: input `input` float32 [N, 1, 28, 28], pixels scaled to [0, 1] (0-255 divided by 255);
output `logits` [N, 10]; the real split: 60,000 training images (the first 512 of them are the
calibration split), the 10,000 test images for evaluation; metric top-1. Weights are cached in
$EDGECOMPILE_CACHE/models keyed by the definition, torch version, epochs and seed.
"""
from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgecompile.data import Dataset, TensorSpec
from edgecompile.errors import DataError
from edgecompile.source import TorchModelSource

from .._common import fingerprint, split_source

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SEED = 0
EPOCHS = 3
CALIBRATION = 512
_HERE = Path(__file__).resolve().parent
_FILES = (_HERE / "__init__.py", _HERE / "model.py", _HERE.parent / "_common.py")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's format: zero, zero, dtype code, rank, big-endian uint32 dims, data), gzipped."""
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        raw = gzip.decompress(Path(path).read_bytes())
    except FileNotFoundError:
        raise DataError(
            f"Fashion-MNIST file {path} not found",
            hint="install Debian's dataset-fashion-mnist package: sudo apt-get install dataset-fashion-mnist",
        ) from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable gzip file: {exc}", hint="reinstall dataset-fashion-mnist") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise DataError(f"{path} is not an IDX file (bad magic number)", hint="reinstall dataset-fashion-mnist")
    rank = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=rank, offset=4))
    dtype = np.dtype(dtypes[raw[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    offset = 4 + 4 * rank
    if len(raw) - offset != need:
        raise DataError(f"{path}: IDX header says {dims} ({need} bytes), the file holds {len(raw) - offset}",
                        hint="reinstall dataset-fashion-mnist")
    return np.frombuffer(raw, dtype, offset=offset).reshape(dims)


@lru_cache(maxsize=None)
def _arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = (read_idx(DATA_DIR / f) for f in FILES[split])
    x = np.ascontiguousarray((images.astype(np.float32) / 255.0)[:, None, :, :])
    return x, labels.astype(np.int64)


def load_split(split: str) -> Dataset:
    if split == "calibration":
        x, y = _arrays("train")
        return Dataset("fashion:calibration", {"input": x[:CALIBRATION]}, y[:CALIBRATION])
    x, y = _arrays(split)
    return Dataset(f"fashion:{split}", {"input": x}, y)


def create():
    """The trained FashionNet (weights cached by definition hash, torch version, epochs, seed)."""
    from edgecompile.compiler.training import deterministic, train_classifier

    from .._common import cached_module
    from .model import FashionNet

    def train(model):
        with deterministic(SEED):
            train_classifier(model, load_split("train"), epochs=EPOCHS, lr=3e-3, batch_size=128, seed=SEED)

    return cached_module("fashion", (fingerprint(*_FILES), EPOCHS, SEED), FashionNet, train)


def source() -> TorchModelSource:
    return split_source(
        "fashion",
        create=create,
        inputs=[TensorSpec("input", ("batch", 1, 28, 28), "float32")],
        outputs=["logits"],
        load_split=load_split,
        metric="top1",
        preprocessing={"layout": "NCHW", "scale": 1 / 255, "source_range": [0, 255], "range": [0.0, 1.0]},
        class_labels=list(CLASSES),
        fingerprint=fingerprint(*_FILES),
    )
