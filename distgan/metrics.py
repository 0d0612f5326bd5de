"""Sample-quality metrics. sliced_wasserstein needs no pretrained weights, so it runs anywhere (tests, CPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, size: int = 16, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between two image sets (N, C, H, W) in [-1, 1], compared at size x size.

    Both sets are projected on the same random unit directions; the 1-D Wasserstein distance of each projection
    is the mean gap between sorted values (equal set sizes). 0 for identical distributions, grows as they differ.
    """
    n = min(a.shape[0], b.shape[0])
    flat = [F.interpolate(x[:n].float(), size=(size, size), mode="area").flatten(1) for x in (a, b)]
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(flat[0].shape[1], projections, generator=gen)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa, pb = (torch.sort(x @ dirs, dim=0).values for x in flat)
    return float((pa - pb).abs().mean())
