"""ShapesNet: a small anchor-free single-stage detector in the CenterNet style.

Stride-4 output grid. One tensor `maps` [N, C + 4, H/4, W/4]: per-class centre heatmaps (sigmoid),
box width/height (in units of SIZE_UNIT pixels) and the sub-cell centre offset. Decoding (peak
picking, boxes, NMS) is the runtime's post-processing step (edgecompile.runtime.detect), recorded in
the bundle manifest.
"""
from __future__ import annotations

import math

import torch
from torch import nn

STRIDE = 4
SIZE_UNIT = 16.0


def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShapesNet(nn.Module):
    def __init__(self, num_classes: int = 3, width: int = 16):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = nn.Sequential(
            conv(3, width // 2), conv(width // 2, width, 2),          # 64 -> 32
            conv(width, width), conv(width, 2 * width, 2),            # 32 -> 16
            conv(2 * width, 2 * width), conv(2 * width, 2 * width),
            conv(2 * width, 2 * width),
        )
        self.head = conv(2 * width, 2 * width)
        self.heat = nn.Conv2d(2 * width, num_classes, 1)
        self.box = nn.Conv2d(2 * width, 4, 1)                      # w, h (SIZE_UNIT px), dx, dy (cells)
        nn.init.constant_(self.heat.bias, -math.log((1 - 0.1) / 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.head(self.backbone(x))
        return torch.cat([torch.sigmoid(self.heat(f)), self.box(f)], dim=1)
