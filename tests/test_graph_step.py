"""The CUDA-graph path of the step (engine/graph_step.py) on the CPU: static buffers, run eagerly, must give the
normal step bitwise; the capture itself needs a GPU (benchmarks/gpu_checks.py checks it there)."""

import pytest
import torch

from distgan.engine.distributed import Dist
from distgan.engine.graph_step import StaticStep, cuda_graph_refusal
from distgan.engine.state import TrainState
from distgan.engine.step import train_step


@pytest.mark.parametrize("fresh, gp_every", [(True, 1), (False, 2), (True, 3)])
def test_the_static_buffer_step_equals_the_normal_step_bitwise(tiny_config, fresh, gp_every):
    cfg = tiny_config(f"train.fresh_real_per_critic_step={fresh}", f"train.gp_every={gp_every}",
                      "model.critic_dropout=0.3")
    results = []
    for static in (False, True):
        torch.manual_seed(5)  # the dropout masks' generator, alike for both
        state = TrainState.create(cfg, torch.device("cpu"), Dist())
        batches = [torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(12)]
        step = StaticStep(state, cfg.train, Dist(), capture=False) if static else \
            (lambda real: train_step(state, real, cfg.train, Dist()))
        metrics = [step(batches.pop) for _ in range(4)]
        results.append((state, metrics, len(batches)))
    (plain, plain_metrics, left), (static, static_metrics, static_left) = results
    assert left == static_left, "the static path read another number of real batches"
    assert (plain.step, plain.critic_steps) == (static.step, static.critic_steps) == (4, 4 * cfg.train.n_critic)
    for a, b in zip(plain_metrics, static_metrics):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for net in ("G", "D", "G_ema"):
        for (name, x), y in zip(getattr(plain, net).state_dict().items(), getattr(static, net).state_dict().values()):
            assert torch.equal(x, y), f"{net}.{name}"


def test_a_config_the_graph_cannot_serve_says_why(tiny_config):
    assert cuda_graph_refusal(tiny_config(), torch.device("cpu")) == "CUDA graphs need CUDA"
    assert "speed.compile" in cuda_graph_refusal(tiny_config("speed.compile=true"), torch.device("cuda"))
    assert cuda_graph_refusal(tiny_config(), torch.device("cuda")) is None


def test_a_batch_that_changes_shape_turns_the_graph_off_once(tiny_config, caplog, monkeypatch):
    """Before its capture (the eager warm-up), a real batch of another shape: the step says so and stays eager.
    (train_step is a stub here: a batch of another size would not fit the global batch's latents.)"""
    import distgan.engine.graph_step as graph_step

    cfg = tiny_config("train.n_critic=1")
    state = TrainState.create(cfg, torch.device("cpu"), Dist())
    seen = []

    def stub(state_, next_real, t, dist):
        seen.append(next_real().shape[0])
        state_.step += 1
        return {}

    monkeypatch.setattr(graph_step, "train_step", stub)
    step = StaticStep(state, cfg.train, Dist(), capture=True)
    step(lambda: torch.rand(16, 3, 16, 16))
    step(lambda: torch.rand(8, 3, 16, 16))
    assert not step.capture and "changed shape" in caplog.text
    for _ in range(4):  # would capture (and fail: no CUDA here) if the graph were still on
        step(lambda: torch.rand(8, 3, 16, 16))
    assert seen == [16, 8, 8, 8, 8, 8] and caplog.text.count("changed shape") == 1
