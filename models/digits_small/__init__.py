"""A tiny student for the digits model: the same DigitsNet at a quarter of the width (8 channels).

Same data binding and contract as `models/digits` (input `input` [N, 1, 8, 8] in [0, 1], output
`logits` [N, 10], metric top-1). Trained from scratch with plain cross-entropy, so it is the natural
student for `edgecompile distill --teacher models/digits --student models/digits_small`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from edgecompile.source import TorchModelSource

from .. import digits
from .._common import fingerprint

WIDTH = 8
EPOCHS = 10
_HERE = Path(__file__).resolve().parent
_FILES = (_HERE / "__init__.py", *digits._FILES)


def create():
    from edgecompile.compiler.training import deterministic, train_classifier

    from .._common import cached_module
    from ..digits.model import DigitsNet

    def train(model):
        with deterministic(digits.SEED):
            train_classifier(model, digits.load_split("train"), epochs=EPOCHS, lr=1e-2, seed=digits.SEED)

    return cached_module("digits_small", (fingerprint(*_FILES), WIDTH, EPOCHS), lambda: DigitsNet(width=WIDTH), train)


def source() -> TorchModelSource:
    return dataclasses.replace(digits.source(), name="digits_small", create=create, fingerprint=fingerprint(*_FILES),
                               default_calibration="digits_small:calibration", default_evaluation="digits_small:test")
