"""Model FLOPs of one rank's generator step, counted op by op, and MFU against the device's dense peak."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

# dense TFLOP/s (bf16, tf32, fp32) by device-name part; the first match counts, so NVL and PCIe precede SXM
PEAKS = (
    ("H100 NVL", (835.0, 417.0, 60.0)),
    ("H100 PCIe", (756.0, 378.0, 51.0)),
    ("H100", (989.0, 494.0, 67.0)),
    ("H200 NVL", (835.0, 417.0, 60.0)),
    ("H200", (989.0, 494.0, 67.0)),
    ("A100", (312.0, 156.0, 19.5)),
)


def peak_of(name: str, bf16: bool, tf32: bool) -> Optional[float]:
    """FLOP/s of the GPU so named at the step's precision, or None."""
    for key, (p_bf16, p_tf32, p_fp32) in PEAKS:
        if key in name:
            return 1e12 * (p_bf16 if bf16 else p_tf32 if tf32 else p_fp32)
    return None


def peak_flops(device: torch.device, bf16: bool, tf32: bool) -> Optional[float]:
    """FLOP/s of the device at the step's precision, or None where unknown."""
    if device.type != "cuda":
        return None
    return peak_of(torch.cuda.get_device_name(device), bf16, tf32)


class _FlopCounter(TorchDispatchMode):
    """torch's per-op FLOP formulas without FlopCounterMode's module tracker, which fails in the penalty."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of what run() executes eagerly."""
    with _FlopCounter() as counter:
        run()
    return int(counter.total)


def count_step_flops(state, run_step: Callable[[], object]) -> int:
    """count_flops of one step, run eagerly: compiled graphs hide their ops."""
    compiled = state.G_compiled, state.D_compiled
    state.G_compiled = state.D_compiled = None
    try:
        return count_flops(run_step)
    finally:
        state.G_compiled, state.D_compiled = compiled
