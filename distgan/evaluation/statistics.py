"""What an image set contributes to the metrics, gathered over ranks: statistics, never full-size images."""

from __future__ import annotations

from typing import Optional

import torch

from distgan.engine.distributed import Dist
from distgan.evaluation.metrics import METRICS
from distgan.evaluation.swd import SIZE as SWD_SIZE
from distgan.evaluation.swd import downsample


class SetStatistics:
    def __init__(self, metrics: list[str], num_features: int, keep: int, device: torch.device, channels: int = 3):
        self.parts = {part for name in metrics for part in METRICS[name].parts}
        self.keep, self.channels, self.device = keep, channels, device
        self.sum = torch.zeros(num_features, dtype=torch.float64, device=device)
        self.outer = torch.zeros(num_features, num_features, dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.kept: dict[str, list[torch.Tensor]] = {"features": [], "small_images": []}

    def add(self, first_index: int, images: torch.Tensor, features: Optional[torch.Tensor]) -> None:
        """A batch from global index first_index: images in [-1, 1], features (N, D) or None."""
        room = max(0, min(images.shape[0], self.keep - first_index))
        if features is not None and "moments" in self.parts:
            f = features.double()
            self.sum += f.sum(dim=0)
            self.outer += f.t() @ f
            self.count += f.shape[0]
        if features is not None and "features" in self.parts and room:
            self.kept["features"].append(features[:room].float())
        if "small_images" in self.parts and room:
            self.kept["small_images"].append(downsample(images[:room]).to(self.device))

    def gathered(self, dist: Dist) -> dict[str, torch.Tensor]:
        """Collective: the whole set's statistics, on the CPU, the same on every rank."""
        out: dict[str, torch.Tensor] = {}
        if "moments" in self.parts:
            moments = [dist.sum_(t.clone()).cpu() for t in (self.sum, self.outer, self.count)]
            out.update(feature_sum=moments[0], feature_outer=moments[1], feature_count=moments[2])
        for part, rows in self.kept.items():
            if part in self.parts:
                mine = torch.cat(rows) if rows else self._empty(part)
                out[part] = dist.gather_rows(mine).cpu()
        return out

    def _empty(self, part: str) -> torch.Tensor:
        """Zero kept rows (all past `keep`), in the other ranks' row shape."""
        if part == "features":
            return torch.zeros(0, self.sum.shape[0], device=self.device)
        return torch.zeros(0, self.channels, SWD_SIZE, SWD_SIZE, device=self.device)


def compute_metrics(real: dict, fake: dict, metrics: list[str], kid_subsets: int, kid_subset_size: int) -> dict:
    """The results of the metrics asked ("eval/fid", "eval/kid", "eval/kid_std", "eval/swd", ...)."""
    options = {"kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size}
    out: dict[str, float] = {}
    for name in metrics:
        out.update(METRICS[name].compute(real, fake, options))
    return out
