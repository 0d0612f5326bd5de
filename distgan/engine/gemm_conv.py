"""The critic's first convolution as im2col + one matrix product (speed.gemm_first_conv).

Why: the gradient penalty differentiates the critic's input gradient, and PyTorch computes the weight-gradient
term of that double backward through the first convolution as a convolution whose batch is the layer's input
channels (3 for RGB). cuDNN has no fast kernel for a batch of 3: on an H200 it took 34% of a bf16 step
(docs/benchmarks.md). Written as unfold + matmul, every term of the forward, backward and double backward is a
large matrix product (cuBLAS) or an unfold/fold (a memory-bound copy), with exactly the same math.

The module keeps nn.Conv2d's parameters and state_dict keys, so checkpoints move freely between the two forms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GemmConv2d(nn.Conv2d):
    """nn.Conv2d (groups=1, zero padding) computed as unfold + matmul; the output is channels_last in memory."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):  # what conv2d would do under autocast: cast, then compute
            x = x.to(torch.get_autocast_dtype(x.device.type))
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        out_h = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        out_w = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C*kh*kw, L)
        # (N, L, C*kh*kw) @ (C*kh*kw, out): rows are output pixels, so the result is NHWC, which the next
        # convolution reads as channels_last without a copy
        y = cols.transpose(1, 2) @ self.weight.flatten(1).t()
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)  # as conv2d under autocast: a bf16 output, not promoted
        return y.view(n, out_h, out_w, self.out_channels).permute(0, 3, 1, 2)


def use_gemm_first_conv(critic: nn.Module) -> nn.Module:
    """Switches the critic's first nn.Conv2d to GemmConv2d in place (same parameters, same state_dict)."""
    first = next(m for m in critic.modules() if isinstance(m, nn.Conv2d))
    if first.groups != 1 or first.padding_mode != "zeros" or isinstance(first.padding, str):
        raise ValueError(f"gemm_first_conv needs a plain convolution, got {first}")
    # a class swap, not a new module: the parameters stay the very tensors the optimizer and DDP were given
    first.__class__ = GemmConv2d
    return critic
