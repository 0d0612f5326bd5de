"""Where a training step's device time goes: torch.profiler over a few steps, the top kernels by time.

    python benchmarks/profile_step.py --config configs/celeba64.yaml speed.precision=bf16 [--steps 5]

Synthetic real batches on the device (the loader is measured by distgan.bench), the real train_step. After the
table, one line per step: the wall time, the host's time in ops and, on a GPU, the GPU's busy time and its
number of kernels and copies (benchmarks/roofline.py counts the kernels the step's ops need, for comparison).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distgan.cli import run_main  # noqa: E402
from distgan.config import load_config  # noqa: E402
from distgan.engine.distributed import Dist  # noqa: E402
from distgan.engine.state import TrainState  # noqa: E402
from distgan.engine.step import train_step  # noqa: E402
from distgan.launch.local import pick_device  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/celeba64.yaml")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=20)
    a = p.parse_intermixed_args()
    if a.steps < 1 or a.top < 1:
        p.error("--steps and --top must be >= 1")
    cfg = load_config(a.config, ["run.mode=local", *a.overrides])
    device = pick_device(cfg.train.device)
    state = TrainState.create(cfg, device, Dist())
    size, batch = cfg.model.image_size, cfg.train.batch_size
    real = torch.rand(batch, cfg.model.channels, size, size, device=device) * 2 - 1
    for _ in range(3):
        train_step(state, lambda: real, cfg.train, Dist())
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(a.steps):
            train_step(state, lambda: real, cfg.train, Dist())
        if cuda:
            torch.cuda.synchronize(device)
    wall_ms = (time.perf_counter() - start) * 1e3 / a.steps
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=a.top, max_name_column_width=70))
    print(per_step_line(prof, a.steps, wall_ms, cuda))


def per_step_line(prof, steps: int, wall_ms: float, cuda: bool) -> str:
    """Where a step's time went, under the profiler: the wall time, the host's time in ops (the sum of their self
    CPU times; Python between ops not included, nor the self time of record_function ranges such as
    Optimizer.step, which is Python too) and, on a GPU, how long the GPU was busy with how many kernels and copies.
    Host time near the wall time and GPU time well below it: the step is bound by the host."""
    host_ms = sum(e.self_cpu_time_total for e in prof.key_averages() if not e.is_user_annotation) / 1e3 / steps
    line = f"per step, under the profiler: {wall_ms:.1f} ms wall, host {host_ms:.1f} ms in ops"
    if cuda:
        device = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        busy_ms = sum(e.device_time_total for e in device) / 1e3 / steps
        line += f", GPU busy {busy_ms:.1f} ms in {len(device) / steps:.0f} kernels and copies"
    return line


if __name__ == "__main__":
    run_main(main)  # a config mistake: one line, no traceback
