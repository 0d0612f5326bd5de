"""What a launcher gives the loop, which knows nothing of Ray, signals or storage (docs/design.md section 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol

import torch

from distgan.engine.distributed import Dist


class CheckpointStore(Protocol):
    """Where full checkpoints are kept. Every rank calls every method."""

    def load_latest(self) -> Optional[dict[str, Any]]:
        """The newest readable checkpoint, or None for a fresh run."""

    def save(self, step: int, payload: dict[str, Any], metrics: dict[str, float]) -> None:
        """Keep payload as step's checkpoint, with its metrics."""

    def save_best(self, step: int, payload: dict[str, Any]) -> None:
        """Keep payload apart as the best checkpoint so far."""


class Evaluate(Protocol):
    """Sample quality of a generator (evaluation/evaluator.py). Collective."""

    def __call__(self, G: torch.nn.Module) -> dict[str, float]:
        """Every rank gets the same results ("eval/fid", ...)."""

    def headline(self, results: dict[str, float]) -> tuple[str, float, bool]:
        """(key, value, lower is better) of the result that ranks checkpoints."""


class Launcher(Protocol):
    dist: Dist  # this process's rank and world size; the default process group is already set up
    device: torch.device  # where this rank trains
    run_dir: Path  # a local folder for TensorBoard events, sample grids and generator exports (see publish)
    cpus: float  # the cores this rank may use (for data.num_workers=-1)
    checkpoints: CheckpointStore

    def should_stop(self) -> bool:
        """Asked at each log step: stop? Any yes checkpoints and returns. May be collective."""

    def preempted(self) -> bool:
        """Asked at each log step: will this node be reclaimed? The first yes checkpoints. May be collective."""

    def publish(self) -> None:
        """Rank 0, after new files under run_dir: copy them where users look."""

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """Every rank, at each evaluation: metrics for a scheduler. May be collective."""
