"""Test model: the shapes detector made fragile for INT8 without changing its FP32 function.

In backbone block FRAGILE_BLOCK, the most active channel's BatchNorm scale and shift are multiplied
by OUTLIER (ReLU commutes with a positive scale) and the next conv's weights for that input channel
divided by it: the next conv's input range is then set by one channel, so quantizing it (uint8, per
tensor) wipes out the others. The sensitivity ranking on mAP must put that next conv first.
"""
from __future__ import annotations

from dataclasses import replace

OUTLIER = 200.0
FRAGILE_BLOCK = 4


def _create():
    import edgecompile.models.shapes as base
    import torch

    module = base.create()
    x = torch.from_numpy(base.load_split("calibration").inputs["input"][:64])
    with torch.no_grad():
        feats = module.backbone[:FRAGILE_BLOCK + 1](x)
        ch = int(feats.mean((0, 2, 3)).argmax())
        bn = module.backbone[FRAGILE_BLOCK][1]
        bn.weight[ch] *= OUTLIER
        bn.bias[ch] *= OUTLIER
        module.backbone[FRAGILE_BLOCK + 1][0].weight[:, ch] /= OUTLIER
    return module.eval()


def source():
    import edgecompile.models.shapes as base

    src = base.source()
    return replace(src, name="fragile_shapes", create=_create, load_split=base.load_split,
                   default_calibration="fragile_shapes:calibration", default_evaluation="fragile_shapes:test",
                   fingerprint=src.fingerprint + f"-fragile{OUTLIER}", _module=None)
