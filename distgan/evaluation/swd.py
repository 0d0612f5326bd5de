"""Sliced Wasserstein distance between two image sets: a sample-quality number that needs no pretrained weights.

Protocol (eval.metrics=[swd], `distgan.evaluate --metrics swd`): both sets are area-downsampled to 16x16 and
compared on 256 random unit directions (seed 0) in that 768-d (3 x 16 x 16) pixel space; the 1-D Wasserstein-1
distance of each projection is the mean gap between the sorted values of two equal-size sets. 0 for identical
sets; it grows as they differ. It sees colour layout, not semantics: use it where FID's network is unavailable
(tests, machines without the weights), and compare SWD numbers only with SWD numbers of the same n and size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIZE = 16


def downsample(images: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, C, size, size) float32 on the CPU."""
    images = images.float()
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="area")
    return images.cpu()


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, size: int = SIZE, seed: int = 0) -> float:
    """SWD of image sets a and b (N, C, H, W) in [-1, 1]; the larger set is cut to the smaller one's size."""
    n = min(a.shape[0], b.shape[0])
    flat = [downsample(x[:n], size).flatten(1) for x in (a, b)]
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(flat[0].shape[1], projections, generator=gen)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa, pb = (torch.sort(x @ dirs, dim=0).values for x in flat)
    return float((pa - pb).abs().mean())
