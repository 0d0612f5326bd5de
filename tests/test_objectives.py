"""The objective plug point (distgan/objectives/): a second objective, hinge loss with R1, added as one file and one
line, trains through the same step, NaN watch and logger; its losses against closed forms."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distgan.errors import ConfigError
from distgan.objectives import OBJECTIVES, build_objective
from distgan.objectives.hinge_r1 import HingeR1, r1_penalty


class Linear(torch.nn.Module):
    """D(x) = w . x + b: its input gradient is w everywhere, so R1 = ||w||^2."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x):
        return (x.flatten(1) * self.w).sum(1) + 0.5


def test_hinge_and_r1_against_closed_forms(tiny_config):
    w = torch.randn(3 * 4 * 4, dtype=torch.float64)
    D = Linear(w)
    real = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    assert float(r1_penalty(D, real)) == pytest.approx(float(w @ w), rel=1e-12)
    objective = HingeR1(tiny_config("train.objective=hinge-r1", "train.gp_weight=4", "train.gp_every=2").train)
    real_scores = torch.tensor([2.0, 0.5], dtype=torch.float64)
    fake_scores = torch.tensor([-2.0, 0.25], dtype=torch.float64)
    loss, metrics = objective.critic_loss(D, real, real, real_scores, fake_scores, None, critic_step=4)
    hinge = (0 + 0.5) / 2 + (0 + 1.25) / 2  # relu(1 - real), relu(1 + fake): means
    assert float(loss) == pytest.approx(hinge + 4 / 2 * 2 * float(w @ w))  # gamma / 2 x k x R1 on update 0 of k
    assert float(metrics["loss/r1"]) == pytest.approx(2 * float(w @ w))
    skipped, metrics = objective.critic_loss(D, real, real, real_scores, fake_scores, None, critic_step=5)
    assert float(skipped) == pytest.approx(hinge) and float(metrics["loss/r1"]) == 0
    assert float(objective.generator_loss(fake_scores)) == pytest.approx(-(-2.0 + 0.25) / 2)


def test_a_run_trains_with_the_second_objective_and_logs_its_own_metrics(tiny_config, tmp_path):
    from distgan.launch.local import train_local

    state = train_local(tiny_config("train.objective=hinge-r1", "train.steps=3"), tmp_path / "run")
    assert state.step == 3 and isinstance(state.objective, HingeR1)
    tags = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload().Tags()["scalars"]
    assert {"loss/critic", "loss/r1", "margin", "loss/generator"} <= set(tags)
    assert "loss/gradient_penalty" not in tags and "wasserstein" not in tags


def test_an_unknown_objective_is_one_line(tiny_config):
    assert list(OBJECTIVES) == ["wgan-gp", "hinge-r1"]
    with pytest.raises(ConfigError, match=r"^train.objective: unknown 'lsgan' \(one of wgan-gp, hinge-r1\)$"):
        build_objective(tiny_config("train.objective=lsgan").train)
