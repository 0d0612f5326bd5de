"""BatchNorm whose batch statistics span all ranks, on any device.

torch.nn.SyncBatchNorm only runs on GPUs; this one works with gloo on CPU as well, so the equivalence test
covers the exact code that runs on the cluster.

Statistics are combined exactly (Chan et al.'s parallel variance) and kept relative to a shift K, rank 0's
rough mean of the channel, because float32 cannot even represent a mean of 100 to better than 8e-6: normalizing
x - mean with such a mean is off by 4e-4 when the spread is 0.01. Each rank sends, per channel,
    n_i, its rough mean s_i (one pass, no gradient), c_i = mean(x - s_i), M2_i = sum((x - s_i - c_i)^2),
and every rank computes, with d_i = (s_i - K) + c_i (small numbers, so exact to rounding):
    offset = sum(n_i d_i) / N,   M2 = sum(M2_i + n_i (d_i - offset)^2),   var = M2 / N,   y = (x - K - offset) / std.
The one-pass E[x^2] - E[x]^2 loses every digit when |mean| >> std (mean 100, std 0.01: 0 or 4e-3 for a true
1e-4); this does not. The gather is autograd-aware (its backward sums each statistic's gradient over the ranks),
so the gradient equals the one-process gradient. Ranks may hold different counts (elastic runs).
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.distributed.nn.functional import all_gather

from distgan.engine.speed import at_least_fp32

DIMS = (0, 2, 3)


def local_moments(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(n, s, c, M2) per channel of (N, C, H, W), as described above."""
    shift = x.detach().mean(dim=DIMS)
    residual = x - shift.view(1, -1, 1, 1)
    corr = residual.mean(dim=DIMS)
    m2 = (residual - corr.view(1, -1, 1, 1)).pow(2).sum(dim=DIMS)
    count = torch.full_like(m2, x.shape[0] * x.shape[2] * x.shape[3])
    return count, shift, corr, m2


def combine_moments(counts, shifts, corrs, m2s) -> tuple[torch.Tensor, ...]:
    """Rows are ranks. (N, K, offset, M2) of all of them together: the mean is K + offset, the variance M2 / N."""
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
        # in fp32 under autocast, as torch's BatchNorm computes its statistics: in bf16 even the counts round
        # (5456 values per channel become 5440); the output keeps the input's dtype, as torch's does
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
    """Swap every BatchNorm2d in place for SyncBatchNorm2d, keeping parameters and running statistics."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child)
    return module
