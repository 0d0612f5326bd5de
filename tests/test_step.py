"""The n_critic/1 schedule and which network each update touches."""

import pytest
import torch

from distgan.engine.distributed import Dist
from distgan.engine.state import TrainState
from distgan.engine.step import train_step


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return [not torch.equal(a, p) for a, p in zip(before, module.parameters())]


@pytest.mark.parametrize("n_critic", [1, 3, 5])
@pytest.mark.parametrize("fresh", [True, False])
def test_schedule_and_isolation(tiny_config, n_critic, fresh):
    cfg = tiny_config(f"train.n_critic={n_critic}", f"train.fresh_real_per_critic_step={fresh}")
    state = TrainState.create(cfg, torch.device("cpu"), Dist())
    calls = {"real": 0, "d": 0, "g": 0}
    log = []

    def next_real():
        calls["real"] += 1
        return torch.rand(16, 3, 16, 16) * 2 - 1

    d_step, g_step = state.opt_d.step, state.opt_g.step

    def counted_d_step(*a, **k):
        g0 = snapshot(state.G)
        out = d_step(*a, **k)
        assert not any(changed(g0, state.G)), "a critic update changed the generator"
        calls["d"] += 1
        log.append("d")
        return out

    def counted_g_step(*a, **k):
        d0 = snapshot(state.D)
        out = g_step(*a, **k)
        assert not any(changed(d0, state.D)), "a generator update changed the critic"
        assert all(p.grad is None for p in state.D.parameters()), "the generator step left critic gradients"
        calls["g"] += 1
        log.append("g")
        return out

    state.opt_d.step, state.opt_g.step = counted_d_step, counted_g_step
    for _ in range(2):
        D0, G0 = snapshot(state.D), snapshot(state.G)
        metrics = train_step(state, next_real, cfg.train, Dist())
        # every parameter moves, except the critic's last bias: the Wasserstein loss is invariant to it
        assert all(changed(D0, state.D)[:-1]) and all(changed(G0, state.G)), "both networks move every step"
    assert log == (["d"] * n_critic + ["g"]) * 2
    assert calls["real"] == 2 * (n_critic if fresh else 1)
    assert state.step == 2 and state.critic_steps == 2 * n_critic
    assert {"loss/critic", "loss/generator", "loss/gradient_penalty", "wasserstein",
            "grad_norm/critic", "grad_norm/generator"} <= set(metrics)


def test_ema_tracks_generator(tiny_config):
    cfg = tiny_config("train.ema_decay=0.5")
    state = TrainState.create(cfg, torch.device("cpu"), Dist())
    before = snapshot(state.G_ema)
    g_before = snapshot(state.G)
    train_step(state, lambda: torch.rand(16, 3, 16, 16) * 2 - 1, cfg.train, Dist())
    for e0, g0, e1, g1 in zip(before, g_before, state.G_ema.parameters(), state.G.parameters()):
        torch.testing.assert_close(e1, 0.5 * e0 + 0.5 * g1)
