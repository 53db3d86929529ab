"""DiabetesMLP: a two-hidden-layer MLP regressor whose output is in the target's own units."""
from __future__ import annotations

import torch
from torch import nn


class DiabetesMLP(nn.Module):
    def __init__(self, features: int = 10, hidden: int = 32, target_mean: float = 0.0, target_std: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 1))
        # trained on the standardised target; the graph maps back to disease-progression units
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.target_std + self.target_mean
