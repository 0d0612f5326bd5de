"""The critic's first convolution as one matrix product over its input windows (speed.gemm_first_conv).

Why: the gradient penalty differentiates the critic's input gradient, and PyTorch computes the weight-gradient
term of that double backward through the first convolution as a convolution whose batch is the layer's input
channels (3 for RGB). cuDNN has no fast kernel for a batch of 3: on an H200 it took 34% of a bf16 step
(docs/benchmarks.md). Written as a gather of the input windows + matmul, every term of the forward, backward and
double backward is a large matrix product (cuBLAS) or a memory-bound gather/scatter, with exactly the same math.

The module keeps nn.Conv2d's parameters and state_dict keys, so checkpoints move freely between the two forms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GemmConv2d(nn.Conv2d):
    """nn.Conv2d (groups=1, zero padding, no dilation) computed as windows + matmul; the output is channels_last in
    memory."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type) and x.dtype == torch.float32:  # as conv2d under autocast
            x = x.to(torch.get_autocast_dtype(x.device.type))
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        # the windows as a view of the padded NHWC input, (N, out_h, out_w, C, kh, kw): one gather copy in the
        # reshape below, and one unfold_backward kernel in the backward (F.unfold's CUDA im2col launches a kernel
        # per sample: on an H100 that made the step 1.4x slower than cuDNN)
        windows = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).unfold(1, kh, sh).unfold(2, kw, sw)
        n, out_h, out_w = windows.shape[:3]
        # rows are output pixels and columns (C, kh, kw), the order of weight.flatten(1): the result is NHWC, which
        # the next convolution reads as channels_last without a copy
        y = windows.reshape(n, out_h, out_w, -1) @ self.weight.flatten(1).t()
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)  # as conv2d under autocast: a bf16 output, not promoted
        return y.permute(0, 3, 1, 2)


def use_gemm_first_conv(critic: nn.Module) -> nn.Module:
    """Switches the critic's first nn.Conv2d to GemmConv2d in place (same parameters, same state_dict)."""
    first = next(m for m in critic.modules() if isinstance(m, nn.Conv2d))
    if type(first) is not nn.Conv2d:  # a subclass (a parametrized or spectral-norm conv) has its own forward
        raise ValueError(f"gemm_first_conv needs a plain nn.Conv2d, got {type(first).__name__}")
    plain = first.groups == 1 and first.padding_mode == "zeros" and first.dilation == (1, 1)
    if not plain or isinstance(first.padding, str):
        raise ValueError(f"gemm_first_conv needs a plain convolution, got {first}")
    # a class swap, not a new module: the parameters stay the very tensors the optimizer and DDP were given
    first.__class__ = GemmConv2d
    return critic
