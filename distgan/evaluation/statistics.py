"""What an image set contributes to FID, KID and SWD, gathered over ranks, and the metrics computed from two sets.

Per set, every rank accumulates on its own device:
- fid: the sum of features, the sum of their outer products and the count (float64): FID's sufficient statistics,
  exactly torchmetrics' FrechetInceptionDistance states. Only these cross the wire (one all-reduce), never images;
- kid: the features of the set's first `keep` images (by global index): the polynomial-kernel MMD needs the
  features themselves, so they are gathered (2048 floats per image);
- swd: the first `keep` images, downsampled to 16x16 (the weights-free protocol of distgan/evaluation/swd.py).
The FID and KID arithmetic is torchmetrics' (the statistics are loaded into its metric objects).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from distgan.engine.distributed import Dist
from distgan.evaluation.swd import SIZE as SWD_SIZE
from distgan.evaluation.swd import downsample, sliced_wasserstein


class Passthrough(nn.Module):
    """A 'feature extractor' for torchmetrics that takes features: the network runs once for all metrics."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class SetStatistics:
    def __init__(self, metrics: list[str], num_features: int, keep: int, device: torch.device, channels: int = 3):
        self.metrics, self.keep, self.channels = list(metrics), keep, channels
        d = num_features
        self.sum = torch.zeros(d, dtype=torch.float64, device=device)
        self.outer = torch.zeros(d, d, dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.kept_features: list[torch.Tensor] = []
        self.kept_images: list[torch.Tensor] = []

    def add(self, first_index: int, images: torch.Tensor, features: Optional[torch.Tensor]) -> None:
        """A batch whose first image has global index first_index; images in [-1, 1], features (N, D) or None."""
        room = max(0, min(images.shape[0], self.keep - first_index))
        if features is not None and "fid" in self.metrics:
            f = features.double()
            self.sum += f.sum(dim=0)
            self.outer += f.t() @ f
            self.count += f.shape[0]
        if features is not None and "kid" in self.metrics and room:
            self.kept_features.append(features[:room].float())
        if "swd" in self.metrics and room:
            self.kept_images.append(downsample(images[:room]).to(self.sum.device))

    def gathered(self, dist: Dist) -> dict[str, torch.Tensor]:
        """Collective: the whole set's statistics, on the CPU, the same on every rank."""
        out: dict[str, torch.Tensor] = {}
        if "fid" in self.metrics:
            stats = [dist.sum_(t.clone()) for t in (self.sum, self.outer, self.count)]
            out.update(fid_sum=stats[0].cpu(), fid_outer=stats[1].cpu(), fid_count=stats[2].cpu())
        for key, rows in (("kid_features", self.kept_features), ("swd_images", self.kept_images)):
            if key.split("_")[0] in self.metrics:
                mine = torch.cat(rows) if rows else self._empty(key)
                out[key] = dist.gather_rows(mine).cpu()
        return out

    def _empty(self, key: str) -> torch.Tensor:
        """No kept rows on this rank (its images all lie past `keep`): the same row shape as the others'."""
        if key == "kid_features":
            return torch.zeros(0, self.sum.shape[0], device=self.sum.device)
        return torch.zeros(0, self.channels, SWD_SIZE, SWD_SIZE, device=self.sum.device)


def compute_metrics(real: dict, fake: dict, metrics: list[str], kid_subsets: int, kid_subset_size: int) -> dict:
    """{"eval/fid", "eval/kid", "eval/kid_std", "eval/swd"} for the metrics asked, from gathered statistics."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    out: dict[str, float] = {}
    if "fid" in metrics:
        fid = FrechetInceptionDistance(feature=Passthrough(real["fid_sum"].shape[0]), reset_real_features=False,
                                       sync_on_compute=False)
        fid.real_features_sum, fid.real_features_cov_sum = real["fid_sum"], real["fid_outer"]
        fid.real_features_num_samples = real["fid_count"].long()
        fid.fake_features_sum, fid.fake_features_cov_sum = fake["fid_sum"], fake["fid_outer"]
        fid.fake_features_num_samples = fake["fid_count"].long()
        fid.orig_dtype = torch.float64  # set by update() otherwise; the result's dtype
        with warnings.catch_warnings():  # "compute called before update": the states were loaded, not updated
            warnings.simplefilter("ignore", UserWarning)
            out["eval/fid"] = float(fid.compute())
    if "kid" in metrics:
        with warnings.catch_warnings():  # "will save all extracted features": that is what it is given
            warnings.simplefilter("ignore", UserWarning)
            kid = KernelInceptionDistance(feature=Passthrough(real["kid_features"].shape[1]), subsets=kid_subsets,
                                          subset_size=kid_subset_size, reset_real_features=False,
                                          sync_on_compute=False)
        kid.update(real["kid_features"].double(), real=True)
        kid.update(fake["kid_features"].double(), real=False)
        with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global RNG: leave training's alone
            torch.manual_seed(0)
            mean, std = kid.compute()
        out["eval/kid"], out["eval/kid_std"] = float(mean), float(std)
    if "swd" in metrics:
        out["eval/swd"] = sliced_wasserstein(real["swd_images"], fake["swd_images"])
    return out
