"""The metrics eval.metrics can name: one file each, registered here by name (docs/evaluation.md)."""

from __future__ import annotations

from distgan.evaluation.metrics.base import Metric
from distgan.evaluation.metrics.fid import FID
from distgan.evaluation.metrics.kid import KID
from distgan.evaluation.metrics.pr import PrecisionRecall
from distgan.evaluation.metrics.swd import SWD

# in the order a best checkpoint is chosen by: the first of these that a run evaluates
METRICS: dict[str, Metric] = {m.name: m for m in (FID(), KID(), SWD(), PrecisionRecall())}


def needs_network(names: list[str]) -> bool:
    return any(METRICS[n].needs_network for n in names)


def headline(results: dict[str, float]) -> tuple[str, float, bool]:
    """(result key, value, lower is better) of the result that ranks checkpoints."""
    metric = next(m for m in METRICS.values() if m.headline in results)
    return metric.headline, results[metric.headline], metric.lower_is_better
