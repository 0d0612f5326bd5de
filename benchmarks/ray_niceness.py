"""Does Ray's worker niceness explain why Ray mode with 1 worker is slower than local mode on a small CPU machine?

Ray starts its worker processes at nice 15 (its `worker_niceness` setting, read from RAY_worker_niceness when a
cluster starts), so that its own daemons win the CPU on a busy node. This times, in interleaved rounds, local mode
and `distgan.bench`'s ray1 mode on a private cluster started at nice 15 (Ray's default) and at nice 0, each round
on a fresh cluster (docs/workarounds.md has the result).

    .venv/bin/python benchmarks/ray_niceness.py --rounds 6 --steps 60 [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distgan import bench  # noqa: E402
from distgan.config import load_config  # noqa: E402

NICENESS = "RAY_worker_niceness"  # read by the raylet when a cluster starts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default="")
    args = p.parse_args()
    cfg = load_config(args.config, [])
    device = bench.pick_device(cfg)
    rounds: dict[str, list[float]] = {"local": [], "ray1 nice 15": [], "ray1 nice 0": []}
    for r in range(args.rounds):
        rounds["local"].append(bench.measure_local(cfg, device, args.steps, args.warmup)["steps_per_s"])
        for nice in (15, 0) if r % 2 == 0 else (0, 15):  # alternate the order: neither always runs first
            os.environ[NICENESS] = str(nice)
            rounds[f"ray1 nice {nice}"].append(bench.measure_ray(cfg, 1, args.steps, args.warmup)["steps_per_s"])
        os.environ.pop(NICENESS)
        print(f"round {r + 1} of {args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rounds.items()),
              flush=True)
    best, median = max(rounds["local"]), statistics.median(rounds["local"])
    for name, values in rounds.items():
        print(f"{name:14s} steps/s best {max(values):.2f} median {statistics.median(values):.2f}   vs local: "
              f"{max(values) / best:.2f}x by best, {statistics.median(values) / median:.2f}x by median")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "steps": args.steps, "rounds": rounds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
