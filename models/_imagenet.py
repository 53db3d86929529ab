"""The synthetic ImageNet-shaped binding shared by resnet18 and mobilenetv2.

These models have random weights (no hub downloads here) with BatchNorm statistics re-estimated on
random inputs. Their data are *synthetic* smooth random images without labels, so the task metric is
top-1 agreement with the FP32 torch model: every stage runs and is measured, but the numbers say
nothing about ImageNet accuracy.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from edgecompile.data import Dataset, TensorSpec
from edgecompile.source import TorchModelSource

from ._common import cached_module, fingerprint, reestimate_batchnorm, synthetic_images

SPLITS = {"train": (256, 11), "calibration": (64, 12), "test": (200, 13)}
PREPROCESSING = {"layout": "NCHW", "size": [224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "range": "normalised", "synthetic": True}


@lru_cache(maxsize=None)
def _split(name: str, split: str) -> Dataset:
    n, seed = SPLITS[split]
    return Dataset(f"{name}:{split}", {"input": synthetic_images(n, seed)}, None, synthetic=True)


def imagenet_source(name: str, model_cls, files: tuple[Path, ...]) -> TorchModelSource:
    fp = fingerprint(*files, Path(__file__), Path(__file__).with_name("_common.py"))

    def create():
        return cached_module(name, (fp,), model_cls, reestimate_batchnorm)

    return TorchModelSource(
        name=name,
        create=create,
        inputs=[TensorSpec("input", ("batch", 3, 224, 224), "float32")],
        outputs=["logits"],
        load_split=lambda split: _split(name, split),
        splits=tuple(SPLITS),
        metric="top1_agreement",
        default_calibration=f"{name}:calibration",
        default_evaluation=f"{name}:test",
        train_split="train",
        preprocessing=PREPROCESSING,
        class_labels=None,
        fingerprint=fp,
    )
