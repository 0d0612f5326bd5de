"""What a metric is: the set statistics it needs (statistics.py) and what it computes from two sets."""

from __future__ import annotations

from typing import Protocol

import torch


class Metric(Protocol):
    name: str  # what eval.metrics says
    needs_network: bool  # the feature network (Inception) or pixels only
    parts: tuple[str, ...]  # the statistics it reads (statistics.PARTS); they are its part of the cache key
    headline: str  # its result key that ranks checkpoints
    lower_is_better: bool

    def compute(self, real: dict[str, torch.Tensor], fake: dict[str, torch.Tensor], options: dict) -> dict[str, float]:
        """Results ("eval/NAME" keys) from the two sets' gathered statistics; options: eval.kid_subsets, ..."""
