"""distgan.bench --batch-sweep: images/s and MFU per worker batch, with and without the CUDA graph."""

from __future__ import annotations

import copy
from typing import Any

import torch

from distgan.config import Config


def batch_sweep(cfg: Config, device: torch.device, batches: list[int], steps: int, warmup: int,
                measure) -> list[dict[str, Any]]:
    """One row per (batch, graph), timed by measure; the graph only on CUDA."""
    rows = []
    graphs = ("false", "true") if device.type == "cuda" else ("false",)
    for batch in batches:
        for graph in graphs:
            run = copy.deepcopy(cfg)
            run.train.batch_size, run.speed.cuda_graph = batch, graph
            print(f"timing batch {batch}, cuda_graph {graph} ...", flush=True)
            result = measure(run, device, steps, warmup)
            rows.append({"batch": batch, "cuda_graph": graph == "true", "steps_per_s": result["steps_per_s"],
                         "step_ms": 1e3 / result["steps_per_s"], "images_per_s": result["images_per_s"],
                         "mfu": result["mfu"], "flops_per_step": result["flops_per_step"]})
    return rows


def sweep_report(rows: list[dict[str, Any]]) -> str:
    lines = ["batch  graph  step ms  images/s per worker  MFU"]
    for r in rows:
        mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] else "-"
        lines.append(f"{r['batch']:>5}  {'yes' if r['cuda_graph'] else 'no':>5}  {r['step_ms']:>7.1f}  "
                     f"{r['images_per_s']:>19.0f}  {mfu}")
    largest = max(r["batch"] for r in rows)
    for graph in sorted({r["cuda_graph"] for r in rows}):
        by_batch = {r["batch"]: r["images_per_s"] for r in rows if r["cuda_graph"] == graph}
        smallest = min(by_batch)
        lines.append(f"{'graph' if graph else 'eager'}: batch {smallest} gives {by_batch[smallest] / by_batch[largest]:.2f}"
                     f" of batch {largest}'s images/s per worker")
    return "\n".join(lines)
