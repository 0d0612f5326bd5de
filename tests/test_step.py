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
        # the fakes are made without a graph: the critic's backward must not reach (and pay for) the generator
        assert all(p.grad is None for p in state.G.parameters()), "the critic update computed generator gradients"
        assert all(p.grad is not None for p in state.D.parameters())
        calls["d"] += 1
        out = d_step(*a, **k)
        log.append("d")
        return out

    def counted_g_step(*a, **k):
        # the critic is frozen in the generator step: its backward fills only the generator's gradients
        assert all(p.grad is None for p in state.D.parameters()), "the generator step computed critic gradients"
        assert all(p.grad is not None for p in state.G.parameters())
        calls["g"] += 1
        out = g_step(*a, **k)
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
    # the BatchNorm statistics are copied, not averaged: G_ema samples in eval mode with them
    buffers = dict(state.G.named_buffers())
    means = [b for name, b in buffers.items() if name.endswith("running_mean")]
    assert means and all(b.abs().sum() > 0 for b in means)  # the step moved them from their initial zeros
    for name, ema_buffer in state.G_ema.named_buffers():
        assert torch.equal(ema_buffer, buffers[name]), name


class LinearCritic(torch.nn.Module):
    """D(x) = <w, x> + b: its input gradient is w for every sample, so the whole critic loss has a closed form."""

    def __init__(self, shape):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(5)) * 0.05)
        self.b = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return (x.flatten(1) * self.w.flatten()).sum(1) + self.b


def critic_inputs(inputs: list, fused: bool) -> list:
    """What the critic saw, as (real, fake, x_hat) per critic update: with the fused forward it sees real and
    fake as one concatenated batch, then x_hat."""
    if not fused:
        return inputs
    out = []
    for i, x in enumerate(inputs):
        out.extend(x.chunk(2) if i % 2 == 0 and len(inputs) > i + 1 else [x])
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_critic_gradient_matches_the_hand_computed_one(tiny_config, fused):
    """d/dw [mean D(fake) - mean D(real) + lambda * mean (||grad_x D|| - 1)^2]
       = mean(fake) - mean(real) + 2 lambda (||w|| - 1) w / ||w||, and 0 for the bias."""
    cfg = tiny_config("train.n_critic=1", "train.gp_weight=7.5", f"speed.fused_critic_forward={fused}")
    state = TrainState.create(cfg, torch.device("cpu"), Dist())
    state.D = LinearCritic((3, 16, 16))
    state.opt_d = torch.optim.SGD(state.D.parameters(), lr=0.0)
    inputs, grads = [], {}
    state.D.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    sgd_step = state.opt_d.step

    def record(*a, **k):
        grads.update(w=state.D.w.grad.clone(), b=state.D.b.grad.clone())
        return sgd_step(*a, **k)

    state.opt_d.step = record
    real = torch.rand(16, 3, 16, 16) * 2 - 1
    train_step(state, lambda: real, cfg.train, Dist())
    seen_real, fake = critic_inputs(inputs[:2], fused)[:2]  # real, fake, then the interpolates
    assert torch.equal(seen_real, real)
    w = state.D.w.detach()
    norm = w.norm()
    expected = fake.mean(0) - real.mean(0) + 2 * 7.5 * (norm - 1) * w / norm
    torch.testing.assert_close(grads["w"], expected, rtol=1e-5, atol=1e-6)
    assert abs(grads["b"].item()) < 1e-6


def test_trainer_alphas_are_uniform_one_per_sample(tiny_config):
    """The alphas train_step really uses, recovered from what the critic sees: x_hat = real + alpha (fake - real)."""
    cfg = tiny_config("train.batch_size=512", "train.n_critic=2", "speed.fused_critic_forward=false")
    state = TrainState.create(cfg, torch.device("cpu"), Dist())
    inputs = []
    state.D.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    for _ in range(4):
        train_step(state, lambda: torch.rand(512, 3, 16, 16) * 2 - 1, cfg.train, Dist())
    per_step = 3 * cfg.train.n_critic + 1  # (real, fake, x_hat) per critic update, then the generator's fakes
    alphas = []
    for s in range(4):
        calls = inputs[s * per_step : (s + 1) * per_step]
        for i in range(cfg.train.n_critic):
            real, fake, x_hat = calls[3 * i : 3 * i + 3]
            d, e = (fake - real).flatten(1), (x_hat - real).flatten(1)
            alpha = (d * e).sum(1) / (d * d).sum(1)  # least squares, per sample
            # one alpha per sample, broadcast over C, H, W
            torch.testing.assert_close(x_hat, real + alpha.view(-1, 1, 1, 1) * (fake - real), rtol=0, atol=1e-5)
            alphas.append(alpha)
    alphas = torch.cat(alphas).double()
    n = alphas.numel()
    assert n == 4 * 2 * 512
    assert alphas.min() >= 0 and alphas.max() <= 1
    # Kolmogorov-Smirnov against U(0, 1): the critical value at p = 0.001 is 1.95 / sqrt(n)
    s = torch.sort(alphas).values
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = torch.max(torch.maximum(grid - s, s - (grid - 1.0 / n))).item()
    assert ks < 1.95 / n ** 0.5, f"KS statistic {ks}"
    assert len(set(alphas.tolist())) > 0.99 * n, "a fresh alpha for every sample and update"


def test_the_lazy_penalty_runs_every_kth_critic_update_with_k_times_lambda(tiny_config, monkeypatch):
    """train.gp_every=k: the penalty's double backward on critic updates 0, k, 2k, ... only, weighted k x lambda
    (checked against the critic's gradient computed by hand), and logged as k x the penalty on those updates, 0 on
    the others (the same mean as the penalty of every update)."""
    import copy

    import distgan.engine.step as step_module
    import distgan.objectives.wgan_gp as wgan_gp
    from distgan.losses import critic_loss, gradient_penalty

    k, n_critic = 2, 3
    cfg = tiny_config(f"train.gp_every={k}", f"train.n_critic={n_critic}", "train.gp_weight=10")
    state = TrainState.create(cfg, torch.device("cpu"), Dist())
    penalized, grads, expected = [], [], []
    real_gp = wgan_gp.gradient_penalty

    def counted(*args, **kwargs):
        penalized.append(state.critic_steps)
        return real_gp(*args, **kwargs)

    monkeypatch.setattr(wgan_gp, "gradient_penalty", counted)
    batches = [torch.rand(16, 3, 16, 16) * 2 - 1 for _ in range(2 * n_critic)]
    real_step = state.opt_d.step

    def recorded_step(*a, **kw):  # the gradient the update applies, and what it should be, before it moves D
        grads.append([p.grad.clone() for p in state.D.parameters()])
        return real_step(*a, **kw)

    state.opt_d.step = recorded_step
    original = step_module.critic_backward

    def by_hand(state_, real, z, alpha, weight, critic_step):
        D = copy.deepcopy(state_.D)
        with torch.no_grad():
            fake = state_.G(z)
        scores = D(torch.cat([real, fake]))
        loss = critic_loss(*scores.split(real.shape[0]))
        if critic_step % k == 0:
            loss = loss + cfg.train.gp_weight * k * gradient_penalty(D, real, fake, alpha=alpha)
        expected.append(torch.autograd.grad(loss, list(D.parameters())))
        return original(state_, real, z, alpha, weight, critic_step)

    monkeypatch.setattr(step_module, "critic_backward", by_hand)
    logged = [train_step(state, batches.pop, cfg.train, Dist())["loss/gradient_penalty"] for _ in range(2)]
    assert penalized == [0, 2, 4], "the penalty runs on critic updates 0, k, 2k, ..."
    for applied, wanted in zip(grads, expected):
        for a, w in zip(applied, wanted):
            torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-6)
    assert all(float(v) > 0 for v in logged)
