"""LeakyReLU then dropout as one elementwise gain in Triton (speed.fused_activations): the gain is piecewise
constant, so the backward and double backward rerun one kernel."""

from __future__ import annotations

import functools

import torch
from torch import nn

BLOCK = 1024
DROPPED, POSITIVE, NEGATIVE = 0, 1, 2


@functools.cache
def kernels():
    """The two Triton kernels, built on first use (when TRITON_INTERPRET is read)."""
    import triton
    import triton.language as tl

    @triton.jit
    def forward_kernel(x_ptr, y_ptr, code_ptr, seed_ptr, n, slope: tl.constexpr, p: tl.constexpr,
                       scale: tl.constexpr, DROPOUT: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
        # slope, p, scale as constants: a float argument would be float32
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n
        acc = tl.float64 if WIDE else tl.float32  # bf16 and fp16 computed in fp32
        x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(acc)
        positive = x > 0
        gain = tl.where(positive, tl.full((BLOCK,), scale, acc), tl.full((BLOCK,), slope * scale, acc))
        code = tl.where(positive, 1, 2)
        if DROPOUT:
            seed = tl.load(seed_ptr)
            keep = tl.rand(seed, offsets) >= p
            gain = tl.where(keep, gain, 0.0)
            code = tl.where(keep, code, 0)
        tl.store(y_ptr + offsets, (x * gain).to(y_ptr.dtype.element_ty), mask=inside)
        tl.store(code_ptr + offsets, code.to(tl.int8), mask=inside)

    @triton.jit
    def gain_kernel(v_ptr, code_ptr, out_ptr, n, slope: tl.constexpr, scale: tl.constexpr, WIDE: tl.constexpr,
                    BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n
        acc = tl.float64 if WIDE else tl.float32
        v = tl.load(v_ptr + offsets, mask=inside, other=0.0).to(acc)
        code = tl.load(code_ptr + offsets, mask=inside, other=0)
        gain = tl.where(code == 1, tl.full((BLOCK,), scale, acc),
                        tl.where(code == 2, tl.full((BLOCK,), slope * scale, acc), tl.zeros((BLOCK,), acc)))
        tl.store(out_ptr + offsets, (v * gain).to(out_ptr.dtype.element_ty), mask=inside)

    return forward_kernel, gain_kernel


def grid(n: int):
    return ((n + BLOCK - 1) // BLOCK,)


def dropout_seed(device: torch.device) -> torch.Tensor:
    """A seed drawn on the device from torch's generator: no host sync, graph-safe."""
    return torch.randint(0, 2**31 - 1, (1,), device=device, dtype=torch.int64)


def dense(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t laid out as `like`: the kernels walk the storage."""
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


class ScaleByGain(torch.autograd.Function):
    """v * gain(code): LeakyDropout's backward, and its own."""

    @staticmethod
    def forward(ctx, v, code, slope, scale):
        ctx.save_for_backward(code)
        ctx.slope, ctx.scale = slope, scale
        v = dense(v, code)
        out = torch.empty_like(v)
        kernels()[1][grid(v.numel())](v, code, out, v.numel(), slope, scale, WIDE=v.dtype == torch.float64,
                                      BLOCK=BLOCK)
        return out

    @staticmethod
    def backward(ctx, grad):
        (code,) = ctx.saved_tensors
        return ScaleByGain.apply(grad, code, ctx.slope, ctx.scale), None, None, None


class LeakyDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, slope, p, seed):
        x = dense(x, x)  # NCHW or NHWC as it comes
        y = torch.empty_like(x)
        code = torch.empty_like(x, dtype=torch.int8)
        scale = 1.0 / (1.0 - p)
        seed = seed if seed is not None else torch.zeros(1, dtype=torch.int64, device=x.device)
        kernels()[0][grid(x.numel())](x, y, code, seed, x.numel(), slope, p, scale, DROPOUT=p > 0,
                                      WIDE=x.dtype == torch.float64, BLOCK=BLOCK)
        ctx.save_for_backward(code)
        ctx.slope, ctx.scale = slope, scale
        ctx.mark_non_differentiable(code)
        return y, code

    @staticmethod
    def backward(ctx, grad_y, grad_code):
        (code,) = ctx.saved_tensors
        return ScaleByGain.apply(grad_y, code, ctx.slope, ctx.scale), None, None, None


def leaky_dropout(x: torch.Tensor, slope: float = 0.2, p: float = 0.0, seed: torch.Tensor | None = None,
                  return_code: bool = False):
    """LeakyReLU(slope) then dropout(p), fused; seed: a (1,) int64 device tensor, drawn when None."""
    if p > 0 and seed is None:
        seed = dropout_seed(x.device)
    y, code = LeakyDropout.apply(x, slope, p, seed)
    return (y, code) if return_code else y


class FusedLeakyDropout(nn.Module):
    """A LeakyReLU and the Dropout it absorbs, which becomes an Identity (same state dict)."""

    def __init__(self, slope: float, p: float = 0.0):
        super().__init__()
        self.slope, self.p = slope, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return leaky_dropout(x, self.slope, self.p if self.training else 0.0)

    def extra_repr(self) -> str:
        return f"slope={self.slope}, p={self.p}"


def use_fused_activations(module: nn.Module) -> nn.Module:
    """Every LeakyReLU of a Sequential (and its Dropout) replaced in place by a FusedLeakyDropout."""
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq)
        for i, layer in enumerate(children):
            if isinstance(layer, nn.LeakyReLU):
                after = children[i + 1] if i + 1 < len(children) else None
                p = after.p if isinstance(after, nn.Dropout) else 0.0
                seq[i] = FusedLeakyDropout(layer.negative_slope, p)
                if isinstance(after, nn.Dropout):
                    seq[i + 1] = nn.Identity()
    return module
