"""BatchNorm whose batch statistics span all ranks, on any device.

torch.nn.SyncBatchNorm only runs on GPUs; this one works with gloo on CPU as well, so the equivalence test
covers the exact code that runs on the cluster. Statistics are summed with the autograd-aware all_reduce, whose
backward sums the statistic gradients over ranks: the gradient equals the one-process gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.distributed.nn.functional import all_reduce


class SyncBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)
        count = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dim=(0, 2, 3)), x.pow(2).sum(dim=(0, 2, 3)), count])
        stats = all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean.pow(2)).clamp_min(0)  # biased, as BatchNorm normalizes with; >= 0
        # despite rounding (E[x^2] - E[x]^2 can dip below 0 when the spread is tiny next to the mean)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        y = (x - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        return y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)


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
