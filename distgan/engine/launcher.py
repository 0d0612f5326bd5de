"""The seam between the training loop and whatever started it: what a launcher gives the loop.

The loop (engine/loop.py) knows nothing of Ray, signals or storage layouts; it asks its launcher for these, and
each launcher implements them in one class: distgan/launch/local.py (one process, run.mode=local) and
distgan/launch/ray_worker.py (a Ray Train worker, run.mode=ray). Tests implement it to inject stops or failures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol

import torch

from distgan.engine.distributed import Dist


class CheckpointStore(Protocol):
    """Where full checkpoints (engine/checkpoint.py's payloads) are kept. Every rank calls both methods."""

    def load_latest(self) -> Optional[dict[str, Any]]:
        """The newest readable checkpoint (an unreadable newest one is reported and skipped), or None for a
        fresh run."""

    def save(self, step: int, payload: dict[str, Any], metrics: dict[str, float]) -> None:
        """Keep payload as the checkpoint of step; metrics go with it where the launcher reports them."""

    def save_best(self, step: int, payload: dict[str, Any]) -> None:
        """Keep payload apart as the best checkpoint so far (by evaluation), besides the newest ones."""


class Evaluate(Protocol):
    """Sample quality of a generator (distgan/evaluation/evaluator.py's Evaluator). Collective."""

    def __call__(self, G: torch.nn.Module) -> dict[str, float]:
        """Every rank alike; every rank gets the same results ("eval/fid", ...)."""

    def headline(self, results: dict[str, float]) -> tuple[str, float, bool]:
        """(result key, value, lower is better) of the result that ranks checkpoints."""


class Launcher(Protocol):
    dist: Dist  # this process's rank and world size; the default process group is already set up
    device: torch.device  # where this rank trains
    run_dir: Path  # a local folder for TensorBoard events, sample grids and generator exports (see publish)
    cpus: float  # the cores this rank may use (for data.num_workers=-1)
    checkpoints: CheckpointStore

    def should_stop(self) -> bool:
        """Asked on every rank at each log step: a stop request (a signal, a stop file). When any rank says yes,
        every rank writes the checkpoint and the loop returns. May be collective: call it on every rank alike."""

    def preempted(self) -> bool:
        """Asked on every rank at each log step: will this node be reclaimed? The first yes writes a checkpoint at
        once and training goes on (the launcher restarts the run from it). May be collective."""

    def publish(self) -> None:
        """Rank 0, after new files were written under run_dir: copy them where users look (object storage)."""

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """Every rank, at each evaluation: metrics for a scheduler (Ray Tune). May be collective."""
