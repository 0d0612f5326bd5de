"""How fast could one training step be on a GPU? Its op-level roofline, traced on any machine without computing.

One generator step (n_critic critic updates and the generator update, the real train_step) runs on fake tensors
(torch._subclasses.FakeTensorMode: shapes and dtypes, no data, no arithmetic), so the seed config's step traces
in seconds on a laptop. For every op that would launch a kernel it records
- FLOPs, by torch.utils.flop_counter's formulas (the count distgan logs as perf/tflops_per_s),
- bytes: what the op must read and write at least (op_bytes: each tensor it needs read once, each it writes
  written once, as memory spans),
and bounds its time on the chosen GPU by max(FLOPs / peak, bytes / memory bandwidth). Summed over the step:
- eager bound: every op its own kernel, each at the roofline, no launch gaps. No eager implementation whose
  kernels go to memory for their operands is faster (tensors small enough to stay in L2 between kernels can beat
  it); MFU bound = counted FLOPs / (peak x eager bound).
- fused bound: only the convolutions and matrix products, as if everything between them were folded into their
  prologues and epilogues; what an ideal fused implementation approaches.

The trace follows the CUDA fast path: the switches speed.* resolve to on a CUDA device (bf16 autocast,
channels_last, fused Adam, the fused critic forward, the GEMM first conv), dispatched through PyTorch's CPU
kernels' shapes. Dropout is traced as CUDA runs it, one native_dropout kernel (the CPU's at::dropout draws a mask
with bernoulli_, scales it and multiplies: three kernels).

    python benchmarks/roofline.py --config configs/celeba64.yaml [key=value ...] [--gpu H100] [--top 15] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distgan.cli import run_main  # noqa: E402
from distgan.errors import UserError  # noqa: E402
from distgan.config import Config, load_config  # noqa: E402
from distgan.engine.distributed import Dist  # noqa: E402
from distgan.engine.flops import PEAKS  # noqa: E402
from distgan.io.run_folder import ensure_writable_file  # noqa: E402
from distgan.engine.speed import Speed  # noqa: E402
from distgan.engine.state import TrainState  # noqa: E402
from distgan.engine.step import train_step  # noqa: E402

# HBM bandwidth, TB/s (vendor datasheets, SXM parts); the compute peaks are distgan.engine.flops.PEAKS
BANDWIDTH = {"H100": 3.35, "H200": 4.8, "A100": 2.0}
# ops that launch no kernel: allocations and metadata (views are recognised by their schema)
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias",
             "_unsafe_view", "lift_fresh", "_local_scalar_dense", "resize_", "set_"}
# functions whose ops run on the host under CUDA too: the latents and alphas come from a CPU generator
HOST_SIDE = {"latents", "alphas"}
MATRIX_OPS = {"convolution", "convolution_backward", "mm", "addmm", "bmm", "baddbmm"}


@dataclass
class Op:
    name: str
    flops: int
    bytes: int
    phase: str = ""


def callers() -> set[str]:
    """The names of the Python functions on the stack."""
    names, frame = set(), sys._getframe(1)
    while frame is not None:
        names.add(frame.f_code.co_name)
        frame = frame.f_back
    return names


def phase_of(names: set[str]) -> str:
    """Which part of the step an op called from these functions belongs to."""
    if "gradient_penalty" in names:
        return "penalty: input gradient (create_graph)" if "grad" in names else "penalty: critic forward at x_hat"
    if "critic_backward" in names:
        return "critic: one backward, with the penalty's double backward" if "backward" in names else \
            "critic: fakes, real+fake forward, losses"
    if "step" in names and "train_step" in names:
        return "optimizer steps"
    return "generator update, metrics, EMA"


def memory_span(t: torch.Tensor) -> int:
    """The bytes a kernel must touch to read or write t once: broadcast (stride 0) dimensions count once,
    overlapping windows (unfold) count their storage once."""
    if t.numel() == 0:
        return 0
    span = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()) if size > 1)
    return min(span, t.numel()) * t.element_size()


def tensors_in(value) -> list[torch.Tensor]:
    return [x for x in tree_leaves(value) if isinstance(x, torch.Tensor)]


def op_bytes(func, args: tuple, kwargs: dict, out) -> int:
    """Bytes read and written at least: each tensor argument read once, except one the op takes only its shape
    from (zeros_like), wholly overwrites (copy_'s destination) or does not need (convolution_backward's input when
    no weight gradient is asked for, its weight when no input gradient is); each output, and each argument the op
    writes in place (_fused_adam_, _foreach_lerp_), written once."""
    name = func._overloadpacket.__name__
    read = written = 0
    returned = {id(t) for t in tensors_in(out)}
    for i, arg in enumerate(func._schema.arguments):
        value = args[i] if i < len(args) else kwargs.get(arg.name)
        tensors = tensors_in(value)
        if not tensors:
            continue
        not_read = (name.endswith("_like") or (name == "copy_" and arg.name == "self")
                    or (name == "convolution_backward" and arg.name == "input" and not args[10][1])
                    or (name == "convolution_backward" and arg.name == "weight" and not args[10][0]))
        if not not_read:
            read += sum(map(memory_span, tensors))
        if arg.alias_info is not None and arg.alias_info.is_write:
            written += sum(memory_span(t) for t in tensors if id(t) not in returned)
    return read + written + sum(map(memory_span, tensors_in(out)))


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[Op] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._overloadpacket.__name__
        if func.is_view or name in NO_KERNEL or func.namespace in ("prim", "profiler"):
            return out
        names = callers()
        if names & HOST_SIDE:
            return out
        formula = flop_registry.get(func._overloadpacket)
        flops = formula(*args, **kwargs, out_val=out) if formula is not None else 0
        self.ops.append(Op(name, int(flops), op_bytes(func, args, kwargs, out), phase_of(names)))
        return out


def cuda_fast_path(cfg: Config) -> Speed:
    """The switches a CUDA device resolves cfg.speed to (nothing touches CUDA), dispatched on the CPU."""
    speed = Speed(cfg.speed, torch.device("cuda"))
    speed.device = torch.device("cpu")  # where autocast runs: the CPU's autocast casts the same ops to bf16
    # the eager step's aten ops: Triton kernels and a graph's replay are not dispatched ops, so not traced
    speed.fused_activations = speed.cuda_graph = False
    return speed


def fake_parameters(module: torch.nn.Module, mode: FakeTensorMode) -> None:
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = torch.nn.Parameter(mode.from_tensor(p.detach()), p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = mode.from_tensor(b)


@contextlib.contextmanager
def dropout_as_on_cuda():
    """F.dropout as at::dropout dispatches it for a CUDA tensor: one native_dropout (mask and output in one kernel;
    its backward native_dropout_backward), which the CPU's at::dropout only uses for other devices."""
    original = F.dropout

    def native(x, p=0.5, training=True, inplace=False):
        return torch.native_dropout(x, p, training)[0] if training and 0 < p < 1 else original(x, p, training, inplace)

    F.dropout = native
    try:
        yield
    finally:
        F.dropout = original


class UnseededNoise:
    """The step's latents and alphas, the same kernels, from the default generator: fake tensors cannot draw from
    the run's own generator (a real tensor on the CPU)."""

    def latents(self, batch: int, z_dim: int) -> torch.Tensor:
        return torch.randn(batch, z_dim)

    def alphas(self, batch: int) -> torch.Tensor:
        return torch.rand(batch).view(-1, 1, 1, 1)


def trace_step(cfg: Config, speed: Speed, fake: bool = True) -> list[Op]:
    """The kernels of one generator step, after one unrecorded step (which creates Adam's state); on fake tensors,
    or with fake=False really computed on the CPU (tests/test_roofline.py compares the two)."""
    cpu = torch.device("cpu")
    state = TrainState.create(cfg, cpu, Dist())  # real weights, built on the CPU: small
    state.speed = speed
    state.G_compiled = state.D_compiled = None  # traced eagerly: a compiled graph cannot run on fake tensors
    if speed.channels_last:
        state.G, state.D, state.G_ema = (m.to(memory_format=torch.channels_last)
                                         for m in (state.G, state.D, state.G_ema))
    if speed.gemm_first_conv:
        state.D = speed.prepare_critic(state.D)
    mode = FakeTensorMode() if fake else contextlib.nullcontext()
    if fake:
        for module in (state.G, state.D, state.G_ema):
            fake_parameters(module, mode)
        state.noise = UnseededNoise()
    t = cfg.train
    with mode, dropout_as_on_cuda():
        state.opt_g = speed.adam(state.G.parameters(), t.lr_g, (t.beta1, t.beta2))
        state.opt_d = speed.adam(state.D.parameters(), t.lr_d, (t.beta1, t.beta2))
        size = cfg.model.image_size
        real = torch.rand(t.batch_size, cfg.model.channels, size, size, device=cpu) * 2 - 1
        train_step(state, lambda: real, t, Dist())
        with OpRecorder() as recorder:
            train_step(state, lambda: real, t, Dist())
    return recorder.ops


def roofline(ops: list[Op], peak_flops: float, bandwidth: float) -> dict:
    """Bounds in seconds (peak in FLOP/s, bandwidth in B/s) and a per-op-name breakdown."""
    by_name: dict[str, dict] = defaultdict(lambda: {"kernels": 0, "flops": 0, "bytes": 0, "seconds": 0.0})
    by_phase: dict[str, dict] = defaultdict(lambda: {"kernels": 0, "flops": 0, "bytes": 0, "seconds": 0.0})
    for op in ops:
        for row in (by_name[op.name], by_phase[op.phase]):
            row["kernels"] += 1
            row["flops"] += op.flops
            row["bytes"] += op.bytes
            row["seconds"] += max(op.flops / peak_flops, op.bytes / bandwidth)
    flops = sum(op.flops for op in ops)
    eager = sum(row["seconds"] for row in by_name.values())
    fused = sum(row["seconds"] for name, row in by_name.items() if name in MATRIX_OPS)
    return {
        "kernels": len(ops), "flops": flops, "bytes": sum(op.bytes for op in ops),
        "compute_seconds": flops / peak_flops, "eager_seconds": eager, "fused_seconds": fused,
        "eager_mfu_bound": flops / peak_flops / eager if eager else 0.0,
        "fused_mfu_bound": flops / peak_flops / fused if fused else 0.0,
        "by_op": dict(sorted(by_name.items(), key=lambda kv: -kv[1]["seconds"])),
        "by_phase": dict(sorted(by_phase.items(), key=lambda kv: -kv[1]["seconds"])),
    }


def report(result: dict, gpu: str, precision: str, top: int, measured: float = 0.0) -> str:
    ms = 1e3
    lines = [
        f"one generator step, {precision} on {gpu}: {result['kernels']} kernels, {result['flops'] / 1e12:.3f} TFLOP, "
        f"{result['bytes'] / 1e9:.2f} GB read and written",
        f"  compute alone at peak   {result['compute_seconds'] * ms:8.2f} ms",
        f"  eager bound             {result['eager_seconds'] * ms:8.2f} ms   MFU <= {result['eager_mfu_bound']:.1%}"
        f"   ({1 / result['eager_seconds']:.1f} steps/s)",
        f"  fused bound (conv+mm)   {result['fused_seconds'] * ms:8.2f} ms   MFU <= {result['fused_mfu_bound']:.1%}",
    ]
    if measured:
        mfu = result["compute_seconds"] * measured
        lines.append(f"  measured {measured:.2f} steps/s: {1e3 / measured:.2f} ms, MFU {mfu:.1%}, "
                     f"{result['eager_seconds'] * measured:.0%} of the eager bound's speed")
    lines += [
        "",
        f"{'op':32s} {'kernels':>7s} {'GFLOP':>9s} {'GB':>8s} {'bound ms':>9s} {'share':>6s}",
    ]
    for name, row in list(result["by_op"].items())[:top]:
        lines.append(row_line(name, row, result["eager_seconds"]))
    lines += ["", f"{'phase':58s} {'kernels':>7s} {'GFLOP':>9s} {'GB':>8s} {'bound ms':>9s} {'share':>6s}"]
    for name, row in result["by_phase"].items():
        lines.append(row_line(name, row, result["eager_seconds"], width=58))
    return "\n".join(lines)


def row_line(name: str, row: dict, total_seconds: float, width: int = 32) -> str:
    return (f"{name:{width}s} {row['kernels']:7d} {row['flops'] / 1e9:9.1f} {row['bytes'] / 1e9:8.3f} "
            f"{row['seconds'] * 1e3:9.3f} {row['seconds'] / total_seconds:6.1%}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/celeba64.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--gpu", default="H100", choices=sorted(BANDWIDTH))
    p.add_argument("--top", type=int, default=15, help="op names listed, by their share of the eager bound")
    p.add_argument("--measured", type=float, default=0.0, metavar="STEPS_PER_S",
                   help="a measured speed of the same config (distgan.bench's steps/s), set against the bounds")
    p.add_argument("--json", type=Path)
    a = p.parse_intermixed_args(argv)
    if a.top < 0 or a.measured < 0:
        raise UserError("--top and --measured must be >= 0")
    if a.json:  # before the trace, not after it
        ensure_writable_file(a.json, "--json")
    cfg = load_config(a.config, ["run.mode=local", *a.overrides])
    if cfg.speed.compile:
        print("speed.compile: traced eagerly (what a compiled graph fuses is not known before compiling)")
    speed = cuda_fast_path(cfg)
    peak_bf16, peak_tf32, peak_fp32 = dict(PEAKS)[a.gpu]
    peak = 1e12 * (peak_bf16 if speed.bf16 else peak_tf32 if cfg.speed.tf32 else peak_fp32)
    result = roofline(trace_step(cfg, speed), peak, BANDWIDTH[a.gpu] * 1e12)
    precision = "bf16" if speed.bf16 else "tf32" if cfg.speed.tf32 else "fp32"
    print(report(result, a.gpu, precision, a.top, a.measured))
    if a.json:
        a.json.expanduser().parent.mkdir(parents=True, exist_ok=True)
        a.json.expanduser().write_text(json.dumps({"gpu": a.gpu, "precision": precision, **result}, indent=1))
    return 0


if __name__ == "__main__":
    run_main(main)
