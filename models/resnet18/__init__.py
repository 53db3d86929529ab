"""ResNet18 with random weights (BatchNorm re-estimated) and a clearly synthetic data binding: see
edgecompile.models._imagenet. Input `input` float32 [N, 3, 224, 224]; output `logits` [N, 1000]."""
from __future__ import annotations

from pathlib import Path

from .._imagenet import imagenet_source
from .model import ResNet18

_HERE = Path(__file__).resolve().parent


def source():
    return imagenet_source("resnet18", ResNet18, (_HERE / "__init__.py", _HERE / "model.py"))
