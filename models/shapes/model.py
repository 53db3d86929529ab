"""ShapesNet: a small anchor-free single-stage detector in the CenterNet style.

Input [N, 3, 96, 96] (models/shapes/data.py IMG), width 24 (channels 12 / 24 / 48, ~75 M MACs);
stride-4 output grid (24 x 24). One tensor `maps` [N, C + 4, H/4, W/4]: per-class centre heatmaps
(sigmoid), box width/height (in units of SIZE_UNIT pixels) and the sub-cell centre offset. Decoding (peak
picking, boxes, NMS) is the runtime's post-processing step (edgecompile.runtime.detect), recorded in
the bundle manifest. The size is chosen for INT8 speed: at 64 x 64 and width 16 (~15 M MACs) ORT's
per-op overhead dominated and INT8 ran ~1.3x FP32; bench/detector_scaling.py measures the candidates.
"""
from __future__ import annotations

import math

import torch
from torch import nn

STRIDE = 4
WIDTH = 24
SIZE_UNIT = 16.0


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShapesNet(nn.Module):
    """`stride` 4 or 8 (output grid = input / stride): each extra stride-2 stage doubles the channels."""

    def __init__(self, num_classes: int = 3, width: int = WIDTH, stride: int = STRIDE):
        super().__init__()
        if stride not in (4, 8):
            raise ValueError(f"ShapesNet stride must be 4 or 8, not {stride}")
        self.num_classes = num_classes
        c = 2 * width
        layers = [conv(3, width // 2), conv(width // 2, width, 2),        # /2
                  conv(width, width), conv(width, c, 2)]                    # /4
        if stride == 8:
            layers += [conv(c, c), conv(c, 2 * c, 2)]                      # /8
            c *= 2
        self.backbone = nn.Sequential(*layers, conv(c, c), conv(c, c), conv(c, c))
        self.head = conv(c, c)
        self.heat = nn.Conv2d(c, num_classes, 1)
        self.box = nn.Conv2d(c, 4, 1)                                      # w, h (SIZE_UNIT px), dx, dy (cells)
        nn.init.constant_(self.heat.bias, -math.log((1 - 0.1) / 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.head(self.backbone(x))
        return torch.cat([torch.sigmoid(self.heat(f)), self.box(f)], dim=1)
