"""The generated shapes data set: splits cached as .npz keyed by the generator's source, and the
normalisation the detection front-end applies."""
from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import numpy as np

from .._common import fingerprint

SEED = 0
N_TRAIN, N_TEST = 2000, 400
EPOCHS = 10
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
_HERE = Path(__file__).resolve().parent


@cache
def _images() -> dict[str, np.ndarray]:
    """Generated splits (uint8 images + labels), cached as .npz keyed by the generator's source."""
    from edgecompile.cache import content_key, subdir

    from .data import TEST_PHOTOS, TRAIN_PHOTOS, generate

    key = content_key("shapes-data/v1", fingerprint(_HERE / "data.py"), N_TRAIN, N_TEST, SEED)[:24]
    path = subdir("data") / f"shapes-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception:
            pass
    tr = generate(N_TRAIN, SEED, TRAIN_PHOTOS)
    te = generate(N_TEST, SEED + 1, TEST_PHOTOS)
    arrays = {"images_train": tr[0], "labels_train": tr[1], "images_test": te[0], "labels_test": te[1]}
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return arrays


def normalise(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 -> [N, 3, H, W] float32, as the front-end does."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
