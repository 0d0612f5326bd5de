"""BatchNorm with batch statistics over all ranks, on CPUs too (torch's SyncBatchNorm is GPU-only); moments
combine exactly around rank 0's rough mean (docs/design.md section 5)."""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.distributed.nn.functional import all_gather

from distgan.engine.speed import at_least_fp32

DIMS = (0, 2, 3)


def local_moments(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per channel of (N, C, H, W): count n, rough mean s, c = mean(x - s), M2 = sum((x - s - c)^2)."""
    shift = x.detach().mean(dim=DIMS)
    residual = x - shift.view(1, -1, 1, 1)
    corr = residual.mean(dim=DIMS)
    m2 = (residual - corr.view(1, -1, 1, 1)).pow(2).sum(dim=DIMS)
    count = torch.full_like(m2, x.shape[0] * x.shape[2] * x.shape[3])
    return count, shift, corr, m2


def combine_moments(counts, shifts, corrs, m2s) -> tuple[torch.Tensor, ...]:
    """(N, K, offset, M2) of all ranks (rows): mean K + offset, variance M2 / N."""
    total = counts.sum(dim=0)
    k = shifts[0]
    d = (shifts - k) + corrs
    offset = (counts * d).sum(dim=0) / total
    m2 = (m2s + counts * (d - offset).pow(2)).sum(dim=0)
    return total, k, offset, m2


class SyncBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)
        # statistics in fp32, as torch's BatchNorm (in bf16 even the counts round); the output keeps x's dtype
        dtype, x = x.dtype, at_least_fp32(x)
        c = x.shape[1]
        gathered = torch.stack(all_gather(torch.cat(local_moments(x))))  # (world, 4C)
        n, k, offset, m2 = combine_moments(*gathered.split(c, dim=1))
        var = m2 / n  # biased, as BatchNorm normalizes with
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(k + offset.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_((m2 / (n - 1)).detach(), alpha=m)
        y = ((x - k.view(1, c, 1, 1)) - offset.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        return (y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)).to(dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d swapped in place for SyncBatchNorm2d, state kept."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child)
    return module
