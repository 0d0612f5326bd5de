"""The GPU fast path: mixed precision, memory layout, fused optimizers, TF32, torch.compile (config section speed).

Each switch keeps the math; tests/test_speed.py checks the ones that could change it (bf16 against fp32 within a
stated tolerance, the fused critic forward against separate forwards to 1e-6):
- precision=bf16: the networks' forward passes under torch.autocast(bfloat16). The penalty's input gradient is
  taken with respect to an fp32 x_hat (so it comes back in fp32), and its norm, the scores' means and every loss
  are computed in fp32; bf16 needs no loss scaling. auto = bf16 on CUDA, fp32 elsewhere.
- channels_last: NHWC activations, which cuDNN's convolution kernels prefer on tensor cores (CUDA only; off
  under compile).
- fused_adam: Adam's update as one kernel over all parameters (CUDA only).
- tf32: TF32 tensor cores for fp32 convolutions and matmuls (CUDA only).
- fused_critic_forward: D(real) and D(fake) as one forward of the concatenated batch. The critic has no batch
  statistics, so every sample's score is what it would be alone (dropout masks are drawn for the whole batch
  instead of per half: the same distribution, another draw).
- compile: torch.compile of the generator and of the critic's first-order uses (real/fake scores, the generator
  step). The penalty's double backward goes through the eager critic: compiled graphs do not support it. The
  compiled modules share their parameters with the eager ones.
- gemm_first_conv: the critic's first convolution as one matrix product over its input windows
  (engine/gemm_conv.py), the same math; it replaces the convolution of batch 3 (the input channels) that the
  penalty's double backward runs. auto = on CUDA without compile, where it is faster; on a CPU it was slower.
- cuda_graph: the whole step captured once as a CUDA graph and replayed (engine/graph_step.py); Adam keeps its
  step count on the device. auto = on CUDA unless compile.
- fused_activations: LeakyReLU + dropout as one Triton kernel per pass (engine/fused_act.py). auto = on CUDA
  unless compile.
- keep_host_memory: glibc's malloc keeps the step's freed buffers for the next step instead of returning them to
  the kernel and page-faulting them in again (engine/host_memory.py); process-wide, and it cannot be undone.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from distgan.engine.fused_act import use_fused_activations
from distgan.engine.gemm_conv import use_gemm_first_conv
from distgan.errors import ConfigError
from distgan.engine.host_memory import keep_freed_host_memory


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def resolve_switch(value, auto: bool) -> bool:
    """auto | true | false (a str field: OmegaConf turns a true given for it into 'True'); auto = the given default."""
    value = str(value).lower()
    return auto if value == "auto" else value == "true"


class Speed:
    """The speed settings resolved for one device; the defaults change nothing."""

    def __init__(self, cfg=None, device: torch.device = torch.device("cpu")):
        cuda = device.type == "cuda"
        self.device = device
        self.bf16 = cfg is not None and resolve_precision(cfg.precision, device) == "bf16"
        # channels_last and compile together crashed inductor's convolution backward (torch 2.11, H200: a stride
        # assertion, docs/benchmarks.md), and each alone gives about the same speed: compile takes precedence
        self.channels_last = bool(cfg and cfg.channels_last and cuda and not cfg.compile)
        self.fused_adam = bool(cfg and cfg.fused_adam and cuda)
        self.fused_critic_forward = bool(cfg and cfg.fused_critic_forward)
        self.compile = bool(cfg and cfg.compile)
        # auto: on CUDA, where it was measured faster; not under compile, with which it was never measured (its
        # output is channels_last, the layout that crashed inductor's convolution backward)
        self.gemm_first_conv = bool(cfg and resolve_switch(cfg.gemm_first_conv, cuda and not cfg.compile))
        self.fused_activations = bool(cfg and resolve_switch(cfg.fused_activations, cuda and not cfg.compile))
        if self.fused_activations and not cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError("speed.fused_activations=true: its Triton kernels need CUDA here (or TRITON_INTERPRET=1, "
                              "the slow interpreter the tests use)")
        # the step as a CUDA graph (engine/graph_step.py): Adam must keep its step count on the device (capturable)
        self.cuda_graph = bool(cfg and cuda and resolve_switch(cfg.cuda_graph, not cfg.compile))
        self.keep_host_memory = bool(cfg and cfg.keep_host_memory and keep_freed_host_memory())
        if cuda and cfg is not None:
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution once

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        # a CUDA graph captures autocast only without its weight-cast cache (torch's CUDA graph notes)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=not self.cuda_graph)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, module: nn.Module) -> nn.Module:
        if self.fused_activations:
            use_fused_activations(module)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def prepare_critic(self, critic: nn.Module) -> nn.Module:
        return use_gemm_first_conv(self.prepare(critic)) if self.gemm_first_conv else self.prepare(critic)

    def adam(self, params, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=self.fused_adam or None,
                                capturable=self.cuda_graph)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """x in at least fp32: autocast's bf16 outputs go up to fp32, fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def no_timer(name: str):
    return contextlib.nullcontext()
