"""Detection example: ShapesNet, a small CenterNet-style detector of coloured shapes (circle,
square, triangle) on crops of real photos, trained in about ten minutes (2 cores) on generated data.

Contract: input `input` float32 [N, 3, 96, 96] (RGB / 255, minus mean 0.5, over std 0.25);
output `maps` float32 [N, 7, 24, 24] (3 class heatmaps, w, h, dx, dy), decoded by the runtime's
detection front-end (`runner.detect(image)`, recorded in the manifest). Labels (for evaluation)
[N, 4, 5]: x1, y1, x2, y2, class per true box in input pixels, rows of -1 pad. Metric: COCO mAP@[.5:.95]
(`map`, pycocotools) with mAP@.5 beside it. Splits: train 2000 images (seed 0, 7 photos), test 400
images (seed 1, 3 other photos held apart), calibration the first 256 train images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecompile.data import Dataset, TensorSpec
from edgecompile.source import TorchModelSource

from .._common import fingerprint, split_source
from .dataset import EPOCHS, MEAN, N_TEST, N_TRAIN, SEED, STD, _images, normalise  # noqa: F401 (re-exported)

_HERE = Path(__file__).resolve().parent
_FILES = tuple(p for p in (_HERE / "__init__.py", _HERE / "model.py", _HERE / "data.py", _HERE / "dataset.py",
                           _HERE / "training.py",
                           _HERE / "weights.npz", _HERE.parent / "_common.py") if p.is_file())


def frontend_spec() -> dict:
    from .data import CLASSES, IMG
    from .model import SIZE_UNIT, STRIDE

    return {"kind": "detection", "decode": "centernet", "input": "input", "output": "maps",
            "input_size": [IMG, IMG], "layout": "NCHW", "scale": 1 / 255, "mean": list(MEAN), "std": list(STD),
            "resize": "bilinear", "stride": STRIDE, "size_unit": SIZE_UNIT, "classes": list(CLASSES),
            "score_threshold": 0.05, "nms_iou": 0.5, "max_detections": 100, "peak_kernel": 3}


def load_split(split: str) -> Dataset:
    a = _images()
    meta = {"detection": frontend_spec()}
    if split == "calibration":
        return Dataset("shapes:calibration", {"input": _normalised("calibration")}, a["labels_train"][:256],
                       meta=meta)
    x = _normalised(split) if split == "test" else normalise(a[f"images_{split}"])
    return Dataset(f"shapes:{split}", {"input": x}, a[f"labels_{split}"], meta=meta)


def _normalised(split: str) -> np.ndarray:
    """The calibration / test inputs, normalised once per process (the gate evaluates the test split again
    and again); each caller gets its own copy, a tenth of the cost of normalising."""
    if split not in _NORMALISED:
        a = _images()
        _NORMALISED[split] = normalise(a["images_train"][:256] if split == "calibration" else a["images_test"])
    return _NORMALISED[split].copy()


_NORMALISED: dict[str, np.ndarray] = {}


def raw_images(split: str) -> np.ndarray:
    """The uint8 HWC images of a split (what an app passes to runner.detect)."""
    return _images()["images_train" if split in ("train", "calibration") else f"images_{split}"]


WEIGHTS = _HERE / "weights.npz"      # written by bench/train_shapes.py (the full training, minutes on 2 cores)


def training_key() -> str:
    """What the trained weights depend on: the network, the data generator, the training code and schedule."""
    from edgecompile.cache import content_key

    files = (_HERE / f for f in ("model.py", "data.py", "dataset.py", "training.py"))
    return content_key("shapes-weights/v1", fingerprint(*files), EPOCHS, SEED, N_TRAIN)[:24]


def create():
    """The trained ShapesNet: the committed weights when their key matches this definition, else
    trained now (and cached in $EDGECOMPILE_CACHE like the other example models)."""
    import torch

    from .._common import cached_module
    from .model import ShapesNet

    if WEIGHTS.is_file():
        with np.load(WEIGHTS, allow_pickle=False) as z:
            if str(z["__key__"]) == training_key():
                module = ShapesNet()
                module.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files if k != "__key__"})
                return module.eval()

    def train(module):
        from .training import train as run

        run(module)

    return cached_module("shapes", (training_key(),), ShapesNet, train)


def save_weights(module, path: Path = WEIGHTS) -> Path:
    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    np.savez_compressed(path, __key__=np.asarray(training_key()), **state)
    return path


def source() -> TorchModelSource:
    from .data import CLASSES, IMG

    spec = frontend_spec()
    return split_source(
        "shapes",
        create=create,
        inputs=[TensorSpec("input", ("batch", 3, IMG, IMG), "float32")],
        outputs=["maps"],
        load_split=load_split,
        metric="map",
        preprocessing={k: spec[k] for k in ("layout", "input_size", "scale", "mean", "std", "resize")},
        class_labels=list(CLASSES),
        fingerprint=fingerprint(*_FILES),
        frontend=spec,
    )
