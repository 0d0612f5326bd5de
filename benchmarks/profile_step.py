"""Where a training step's device time goes: torch.profiler over a few steps, the top kernels by time.

    python benchmarks/profile_step.py --config configs/celeba64.yaml speed.precision=bf16 [--steps 5]

Synthetic real batches on the device (the loader is measured by distgan.bench), the real train_step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

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
    cfg = load_config(a.config, ["run.mode=local", *a.overrides])
    device = pick_device(cfg.train.device)
    state = TrainState.create(cfg, device, Dist())
    size, batch = cfg.model.image_size, cfg.train.batch_size
    real = torch.rand(batch, cfg.model.channels, size, size, device=device) * 2 - 1
    for _ in range(3):
        train_step(state, lambda: real, cfg.train, Dist())
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(a.steps):
            train_step(state, lambda: real, cfg.train, Dist())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=a.top, max_name_column_width=70))


if __name__ == "__main__":
    main()
