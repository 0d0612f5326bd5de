"""Evaluates a generator on every rank; only statistics cross the wire, rank 0 computes the metrics."""

from __future__ import annotations

import time
from typing import Optional

import torch

from distgan.config import Config
from distgan.engine.distributed import Dist
from distgan.errors import ConfigError
from distgan.evaluation.inception import FeatureNetwork, file_digest, to_uint8, weights_path
from distgan.evaluation.metrics import METRICS, headline, needs_network
from distgan.evaluation.reference import reference_source, reference_statistics
from distgan.evaluation.statistics import SetStatistics, compute_metrics


def uses_network(cfg: Config) -> bool:
    return needs_network(cfg.eval.metrics)


def check_evaluation(cfg: Config) -> None:
    """Finds what is wrong in eval.* (metrics, weights, reference data) before training."""
    from distgan.data.sources import check_manifest, resolve_source

    unknown = [m for m in cfg.eval.metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"eval.metrics: unknown {unknown} (one of {', '.join(METRICS)})")
    if uses_network(cfg):
        weights_path(cfg.eval.weights)
    source = reference_source(cfg)
    what = "eval.source" if cfg.eval.source else "data.source"
    _, manifest = resolve_source(source, what)
    if manifest is not None:
        check_manifest(manifest, cfg.model.image_size, cfg.model.channels, what)


class Evaluator:
    def __init__(self, cfg: Config, dist: Dist, device: torch.device):
        self.cfg, self.dist, self.device = cfg, dist, device
        self.network: Optional[FeatureNetwork] = None
        digest = "none"
        if uses_network(cfg):
            path = weights_path(cfg.eval.weights)
            self.network = FeatureNetwork(path).to(device)
            digest = file_digest(path)
        self.reference = reference_statistics(cfg, dist, device, self.network, digest)

    @torch.no_grad()
    def __call__(self, G: torch.nn.Module) -> dict[str, float]:
        """Collective: every rank calls it with its (identical) generator; every rank gets the same numbers."""
        ev, dist = self.cfg.eval, self.dist
        started = time.perf_counter()
        n = ev.num_samples
        lo, hi = n * dist.rank // dist.world_size, n * (dist.rank + 1) // dist.world_size
        z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(ev.seed))[lo:hi]
        num_features = self.network.num_features if self.network is not None else 1
        stats = SetStatistics(ev.metrics, num_features, keep=n, device=self.device, channels=self.cfg.model.channels)
        was_training = G.training
        G.eval()
        for start in range(0, hi - lo, ev.batch_size):
            images = G(z[start : start + ev.batch_size].to(self.device))
            quantized = to_uint8(images)  # what a saved PNG holds: the real images are uint8 too
            features = self.network(quantized) if self.network is not None else None
            stats.add(lo + start, quantized.float().div(127.5).sub(1), features)
        G.train(was_training)
        fake = stats.gathered(dist)
        results = None
        if dist.is_main:
            results = compute_metrics(self.reference, fake, ev.metrics, ev.kid_subsets, ev.kid_subset_size)
        results = dist.broadcast_object(results)
        results["eval/seconds"] = time.perf_counter() - started
        return results

    @staticmethod
    def headline(results: dict[str, float]) -> tuple[str, float, bool]:
        """(result key, value, lower is better) of the result that ranks checkpoints."""
        return headline(results)


def evaluator_for(cfg: Config, dist: Dist, device: torch.device) -> Optional[Evaluator]:
    """The evaluator if eval.every asks for one (collective: reads or computes the reference statistics)."""
    return Evaluator(cfg, dist, device) if cfg.eval.every else None
