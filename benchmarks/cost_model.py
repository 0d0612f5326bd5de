"""The scaling model of docs/benchmarks.md, from a measured batch sweep (python -m distgan.bench --batch-sweep ...).

    python benchmarks/cost_model.py SWEEP.json [--global-batches 512,4096] [--gpus 1,2,4,8,16,32,64]

Step time on N workers at global batch B = the one-worker step at batch B/N + the gradient all-reduces:
- the one-worker step, interpolated from the sweep (log-log, linear past its ends): eagerly it is max(host, GPU) as
  measured; replayed from a CUDA graph it is the GPU's time alone (the host launches one graph);
- all-reduces: per generator step n_critic of the critic's gradients and one of the generator's (fp32), each a ring
  all-reduce: 2 (N - 1) / N x bytes / bandwidth + 2 (N - 1) x latency, not overlapped with compute (distgan
  reduces after each backward).
Links (bandwidth per GPU, latency per hop), stated, not measured: NVLink 4 (450 GB/s, 5 us: an H100 SXM node, for
every N as if one NVLink domain held them), 400 Gb/s (50 GB/s, 10 us) and 100 Gb/s (12.5 GB/s, 10 us) networks.
Speed-up = images/s on N workers / images/s on one worker with the whole batch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

LINKS = {"NVLink": (450e9, 5e-6), "400 Gb/s": (50e9, 10e-6), "100 Gb/s": (12.5e9, 10e-6)}


def interpolate(points: dict[int, float], batch: float) -> float:
    """Step ms at `batch` from measured {batch: ms}: log-log between neighbours; past either end, the line through
    the two nearest points in linear space (a step's time grows about linearly with a large batch)."""
    xs = sorted(points)
    if batch in points:
        return points[batch]
    if len(xs) == 1:
        return points[xs[0]] * batch / xs[0]
    if batch < xs[0] or batch > xs[-1]:
        a, b = (xs[0], xs[1]) if batch < xs[0] else (xs[-2], xs[-1])
        slope = (points[b] - points[a]) / (b - a)
        return max(points[a] + slope * (batch - a), 1e-6)
    hi = next(x for x in xs if x > batch)
    lo = max(x for x in xs if x < batch)
    t = (math.log(batch) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return math.exp(math.log(points[lo]) + t * (math.log(points[hi]) - math.log(points[lo])))


def allreduce_s(n: int, nbytes: float, bandwidth: float, latency: float) -> float:
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency


def step_s(step_ms: dict[int, float], n: int, global_batch: int, critic_bytes: float, generator_bytes: float,
           n_critic: int, link: tuple[float, float]) -> float:
    compute = interpolate(step_ms, global_batch / n) / 1e3
    reduces = n_critic * allreduce_s(n, critic_bytes, *link) + allreduce_s(n, generator_bytes, *link)
    return compute + reduces


def speedups(step_ms: dict[int, float], gpus: list[int], global_batch: int, critic_bytes: float,
             generator_bytes: float, n_critic: int, link: tuple[float, float]) -> dict[int, float]:
    one = step_s(step_ms, 1, global_batch, critic_bytes, generator_bytes, n_critic, link)
    return {n: one / step_s(step_ms, n, global_batch, critic_bytes, generator_bytes, n_critic, link) for n in gpus}


def parameter_bytes(config: dict) -> tuple[float, float]:
    """(critic, generator) gradient bytes in fp32 for the sweep's model."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from distgan.config import from_dict
    from distgan.models import build_models

    G, D = build_models(from_dict(config).model)
    return 4.0 * sum(p.numel() for p in D.parameters()), 4.0 * sum(p.numel() for p in G.parameters())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path, help="the JSON of distgan.bench --batch-sweep")
    p.add_argument("--global-batches", default="512,4096")
    p.add_argument("--gpus", default="1,2,4,8,16,32,64")
    args = p.parse_args()
    data = json.loads(args.sweep.read_text())
    rows = data.get("batch_sweep")
    if not rows:
        p.error(f"{args.sweep} holds no batch_sweep (python -m distgan.bench --batch-sweep ... --json FILE)")
    critic_bytes, generator_bytes = parameter_bytes(data["config"])
    n_critic = data["config"]["train"]["n_critic"]
    gpus = [int(n) for n in args.gpus.split(",")]
    print(f"{data['device']}: critic {critic_bytes / 2**20:.1f} MiB, generator {generator_bytes / 2**20:.1f} MiB of "
          f"fp32 gradients, {n_critic} critic all-reduces per step")
    for graph in sorted({r["cuda_graph"] for r in rows}):
        step_ms = {r["batch"]: r["step_ms"] for r in rows if r["cuda_graph"] == graph}
        for global_batch in [int(b) for b in args.global_batches.split(",")]:
            print(f"\n{'CUDA graph' if graph else 'eager'}, global batch {global_batch}: speed-up over 1 GPU")
            print("link       " + "".join(f"{n:>7}" for n in gpus))
            for name, link in LINKS.items():
                s = speedups(step_ms, gpus, global_batch, critic_bytes, generator_bytes, n_critic, link)
                print(f"{name:<11}" + "".join(f"{s[n]:>7.2f}" for n in gpus))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
