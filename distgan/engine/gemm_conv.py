"""The critic's first convolution as windows + matmul (speed.gemm_first_conv): the penalty's double backward
otherwise runs a batch-3 convolution, which cuDNN is slow at."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GemmConv2d(nn.Conv2d):
    """nn.Conv2d (groups=1, zero padding, no dilation) as windows + matmul; its output is channels_last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type) and x.dtype == torch.float32:  # as conv2d under autocast
            x = x.to(torch.get_autocast_dtype(x.device.type))
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        # windows as a view of the padded NHWC input, (N, out_h, out_w, C, kh, kw); not F.unfold (slow on CUDA)
        windows = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).unfold(1, kh, sh).unfold(2, kw, sw)
        n, out_h, out_w = windows.shape[:3]
        # columns (C, kh, kw) in weight.flatten(1)'s order; the NHWC result is channels_last for the next conv
        y = windows.reshape(n, out_h, out_w, -1) @ self.weight.flatten(1).t()
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)  # as conv2d under autocast: a bf16 output, not promoted
        return y.permute(0, 3, 1, 2)


def use_gemm_first_conv(critic: nn.Module) -> nn.Module:
    """Switches the critic's first nn.Conv2d to GemmConv2d in place."""
    first = next(m for m in critic.modules() if isinstance(m, nn.Conv2d))
    if type(first) is not nn.Conv2d:  # a subclass (a parametrized or spectral-norm conv) has its own forward
        raise ValueError(f"gemm_first_conv needs a plain nn.Conv2d, got {type(first).__name__}")
    plain = first.groups == 1 and first.padding_mode == "zeros" and first.dilation == (1, 1)
    if not plain or isinstance(first.padding, str):
        raise ValueError(f"gemm_first_conv needs a plain convolution, got {first}")
    # a class swap, not a new module: the parameters stay the very tensors the optimizer and DDP were given
    first.__class__ = GemmConv2d
    return critic
