"""The metric protocol (distgan/evaluation/metrics/): improved precision and recall against a direct computation,
and what the registry tells the loop and the reference cache."""

import numpy as np
import pytest
import torch

from distgan.evaluation.metrics import METRICS, headline, needs_network
from distgan.evaluation.metrics.pr import PrecisionRecall


def direct_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019, written out: a ball around each point as wide as its k-th nearest neighbour in its
    own set; precision = share of fakes in some real ball, recall = share of reals in some fake ball."""
    def radii(points):
        return [sorted(np.linalg.norm(points - p, axis=1))[k] for p in points]  # [0] is the point itself

    def share_inside(queries, points):
        r = radii(points)
        return np.mean([any(np.linalg.norm(q - p) <= rp for p, rp in zip(points, r)) for q in queries])

    return share_inside(fake, real), share_inside(real, fake)


@pytest.mark.parametrize("shift", [0.0, 0.7, 3.0])
def test_precision_and_recall_equal_the_direct_computation(shift):
    g = np.random.default_rng(0)
    real = g.normal(size=(60, 5))
    fake = g.normal(size=(60, 5)) * 0.5 + shift  # narrower (fewer modes): recall drops first
    expected = direct_precision_recall(real, fake)
    got = PrecisionRecall().compute({"features": torch.from_numpy(real)}, {"features": torch.from_numpy(fake)}, {})
    assert (got["eval/precision"], got["eval/recall"]) == pytest.approx(expected, abs=1e-12)


def test_identical_sets_score_one_and_distant_sets_zero():
    x = torch.randn(50, 8, dtype=torch.float64)
    same = PrecisionRecall().compute({"features": x}, {"features": x.clone()}, {})
    far = PrecisionRecall().compute({"features": x}, {"features": x + 100}, {})
    assert same == {"eval/precision": 1.0, "eval/recall": 1.0}
    assert far == {"eval/precision": 0.0, "eval/recall": 0.0}


def test_a_collapsed_generator_keeps_precision_and_loses_recall():
    x = torch.randn(200, 4, dtype=torch.float64)
    collapsed = x[:10].repeat(20, 1) + 1e-3 * torch.randn(200, 4, dtype=torch.float64)  # 10 of 200 modes
    got = PrecisionRecall().compute({"features": x}, {"features": collapsed}, {})
    assert got["eval/precision"] > 0.9 and got["eval/recall"] < 0.2


def test_the_registry_tells_network_use_and_which_result_ranks_checkpoints():
    assert list(METRICS) == ["fid", "kid", "swd", "pr"]
    assert needs_network(["swd", "kid"]) and not needs_network(["swd"])
    assert headline({"eval/swd": 0.1, "eval/fid": 30.0}) == ("eval/fid", 30.0, True)
    assert headline({"eval/precision": 0.6, "eval/recall": 0.4}) == ("eval/recall", 0.4, False)


def test_precision_and_recall_through_the_evaluator(tiny_config, tiny_features):
    """eval.metrics=[pr] end to end: features of the real and generated sets, kept and gathered like KID's."""
    from distgan.engine.distributed import Dist
    from distgan.evaluation.evaluator import Evaluator
    from distgan.models import build_models

    cfg = tiny_config("eval.metrics=[pr,kid]", f"eval.weights={tiny_features}", "eval.num_samples=64",
                      "eval.num_real=64", "eval.kid_subset_size=32", "eval.every=1")
    G = build_models(cfg.model)[0]
    results = Evaluator(cfg, Dist(), torch.device("cpu"))(G)
    assert 0 <= results["eval/precision"] <= 1 and 0 <= results["eval/recall"] <= 1
    assert "eval/kid" in results
