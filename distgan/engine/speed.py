"""The GPU fast path (config section speed): each switch keeps the math; docs/benchmarks.md says what each
gains."""

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
    """auto | true | false (or OmegaConf's 'True'); auto = the given default."""
    value = str(value).lower()
    return auto if value == "auto" else value == "true"


class Speed:
    """The speed settings resolved for one device; the defaults change nothing."""

    def __init__(self, cfg=None, device: torch.device = torch.device("cpu")):
        cuda = device.type == "cuda"
        self.device = device
        self.bf16 = cfg is not None and resolve_precision(cfg.precision, device) == "bf16"
        # not with compile: together they crash inductor (docs/workarounds.md); compile takes precedence
        self.channels_last = bool(cfg and cfg.channels_last and cuda and not cfg.compile)
        self.fused_adam = bool(cfg and cfg.fused_adam and cuda)
        self.fused_critic_forward = bool(cfg and cfg.fused_critic_forward)
        self.compile = bool(cfg and cfg.compile)
        # auto: on CUDA, where it measured faster; not under compile (never measured; its output is channels_last)
        self.gemm_first_conv = bool(cfg and resolve_switch(cfg.gemm_first_conv, cuda and not cfg.compile))
        self.fused_activations = bool(cfg and resolve_switch(cfg.fused_activations, cuda and not cfg.compile))
        if self.fused_activations and not cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError("speed.fused_activations=true: its Triton kernels need CUDA here (or TRITON_INTERPRET=1, "
                              "the slow interpreter the tests use)")
        # a CUDA graph needs Adam's step count on the device (capturable)
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
    """x in at least fp32: bf16 and fp16 go up to fp32, wider dtypes stay."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def no_timer(name: str):
    return contextlib.nullcontext()
