"""Test model: the diabetes MLP made fragile for INT8 without changing its FP32 function.

The most active hidden channel of the first layer is scaled up by OUTLIER (ReLU commutes with a
positive scale) and the second layer's matching input weights scaled down by the same factor:
the second layer's input range is then set by that one channel, so quantizing it (uint8, per
tensor) destroys the others. Sensitivity on the task metric must rank `body.2` first.
"""
from __future__ import annotations

from dataclasses import replace

OUTLIER = 300.0
FRAGILE_LAYER = "body.2"


def _create():
    import edgecompile.models.diabetes as base
    import torch

    module = base.create()
    x = torch.from_numpy(base.load_split("train").inputs["input"])
    with torch.no_grad():
        first, second = module.body[0], module.body[2]
        ch = int(torch.relu(first(x)).mean(0).argmax())
        first.weight[ch] *= OUTLIER
        first.bias[ch] *= OUTLIER
        second.weight[:, ch] /= OUTLIER
    return module.eval()


def source():
    import edgecompile.models.diabetes as base

    src = base.source()

    def load_split(split):
        return base.load_split(split)

    return replace(src, name="fragile_diabetes", create=_create, load_split=load_split,
                   default_calibration="fragile_diabetes:calibration", default_evaluation="fragile_diabetes:test",
                   fingerprint=src.fingerprint + f"-fragile{OUTLIER}", _module=None)
