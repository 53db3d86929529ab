"""FashionNet: a small CNN for 28x28 grey Fashion-MNIST images (three conv blocks, linear head)."""
from __future__ import annotations

import torch
from torch import nn


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FashionNet(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(1, width),
            nn.MaxPool2d(2),                  # 28 -> 14
            conv_block(width, 2 * width),
            nn.MaxPool2d(2),                  # 14 -> 7
            conv_block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
