"""A 'feature extractor' for torchmetrics that takes features: the network runs once for all metrics."""

from __future__ import annotations

import torch
from torch import nn


class Passthrough(nn.Module):
    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
