"""The fast path keeps the math (distgan/engine/speed.py): the fused critic forward gives the same gradients as
separate forwards, and bf16 autocast stays within a stated tolerance of fp32 over a few steps (on the CPU here;
docs/benchmarks.md has the GPU run)."""

import pytest
import torch

from distgan.engine.distributed import Dist
from distgan.engine.state import TrainState
from distgan.engine.step import train_step

BF16_TOLERANCE = 0.01  # relative, on the losses of the first steps (measured here: up to 2e-3)


def run(tiny_config, steps: int, *overrides: str, dtype: torch.dtype = torch.float32):
    """steps train_steps; with dtype=float64 the networks, data and noise in double precision, so that only the
    math differs, not the rounding of float32 sums in another order."""
    cfg = tiny_config("train.batch_size=32", *overrides)
    state = TrainState.create(cfg, torch.device("cpu"), Dist())
    if dtype == torch.float64:
        state.G.double(), state.D.double(), state.G_ema.double()
        latents, alphas = state.noise.latents, state.noise.alphas
        state.noise.latents = lambda *a: latents(*a).double()
        state.noise.alphas = lambda *a: alphas(*a).double()
    g = torch.Generator().manual_seed(7)
    batches = [(torch.rand(32, 3, 16, 16, generator=g) * 2 - 1).to(dtype) for _ in range(steps * cfg.train.n_critic)]
    feed = iter(batches)
    grads, losses = [], []
    step = state.opt_d.step

    def recorded(*a, **k):
        grads.append([p.grad.detach().clone() for p in state.D.parameters()])
        return step(*a, **k)

    state.opt_d.step = recorded
    for _ in range(steps):
        metrics = train_step(state, lambda: next(feed), cfg.train, Dist())
        losses.append({k: v.item() for k, v in metrics.items()})
        if dtype == torch.float32:
            assert all(v.dtype == torch.float32 for v in metrics.values()), "losses and norms are reduced in fp32"
    return grads, losses


def test_fused_critic_forward_gives_the_same_gradients(tiny_config):
    """Two full steps in float64 (in float32 a batch of 64 instead of 32 reorders the convolutions' sums: ~5e-6)."""
    fused, _ = run(tiny_config, 2, "speed.fused_critic_forward=true", dtype=torch.float64)
    separate, _ = run(tiny_config, 2, "speed.fused_critic_forward=false", dtype=torch.float64)
    worst = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                for ga, gb in zip(fused, separate) for a, b in zip(ga, gb))
    print(f"fused vs separate critic forward: max relative gradient difference {worst:.1e}")
    assert len(fused) == len(separate) == 4 and worst < 1e-6


def test_bf16_losses_follow_fp32(tiny_config):
    _, fp32 = run(tiny_config, 3, "speed.precision=fp32")
    _, bf16 = run(tiny_config, 3, "speed.precision=bf16")
    for name in ("loss/critic", "loss/gradient_penalty", "loss/generator", "grad_norm/critic"):
        for a, b in zip(bf16, fp32):
            assert a[name] == pytest.approx(b[name], rel=BF16_TOLERANCE, abs=1e-3), (name, a[name], b[name])
    assert any(a["loss/critic"] != b["loss/critic"] for a, b in zip(bf16, fp32)), "bf16 really ran"
