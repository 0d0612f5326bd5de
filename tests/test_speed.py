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


def worst_gradient_difference(tiny_config, switch: str) -> float:
    """Two full steps in float64 with the switch true and false: the largest relative difference between the
    critic gradients of the 4 critic updates."""
    on, _ = run(tiny_config, 2, f"{switch}=true", dtype=torch.float64)
    off, _ = run(tiny_config, 2, f"{switch}=false", dtype=torch.float64)
    assert len(on) == len(off) == 4
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
               for ga, gb in zip(on, off) for a, b in zip(ga, gb))


def test_fused_critic_forward_gives_the_same_gradients(tiny_config):
    """Two full steps in float64 (in float32 a batch of 64 instead of 32 reorders the convolutions' sums: ~5e-6)."""
    worst = worst_gradient_difference(tiny_config, "speed.fused_critic_forward")
    print(f"fused vs separate critic forward: max relative gradient difference {worst:.1e}")
    assert worst < 1e-6


@pytest.mark.parametrize("gemm", ["false", "true"])
def test_bf16_losses_follow_fp32(tiny_config, gemm):
    _, fp32 = run(tiny_config, 3, "speed.precision=fp32")
    _, bf16 = run(tiny_config, 3, "speed.precision=bf16", f"speed.gemm_first_conv={gemm}")
    for name in ("loss/critic", "loss/gradient_penalty", "loss/generator", "grad_norm/critic"):
        for a, b in zip(bf16, fp32):
            assert a[name] == pytest.approx(b[name], rel=BF16_TOLERANCE, abs=1e-3), (name, a[name], b[name])
    assert any(a["loss/critic"] != b["loss/critic"] for a, b in zip(bf16, fp32)), "bf16 really ran"


def test_gemm_first_conv_is_the_same_convolution():
    """GemmConv2d against nn.Conv2d in float64: output, first-order gradients, and the penalty's double backward
    (the term the GEMM form exists for), on a stride-2 padded layer like the critic's first and an odd one."""
    from distgan.engine.gemm_conv import GemmConv2d

    g = torch.Generator().manual_seed(3)
    for args, size in (((3, 8, 4, 2, 1), 16), ((2, 5, 3, 1, 2), 9), ((3, 4, (3, 2), (2, 1), (0, 1)), 11)):
        conv = torch.nn.Conv2d(*args).double()
        gemm = GemmConv2d(*args).double()
        gemm.load_state_dict(conv.state_dict())
        x = torch.randn(4, args[0], size, size, generator=g, dtype=torch.float64)
        results = []
        for layer in (conv, gemm):
            xi = x.clone().requires_grad_(True)
            out = layer(xi)
            (grad_x,) = torch.autograd.grad(out.pow(2).sum(), xi, create_graph=True)
            penalty = grad_x.pow(2).sum()  # depends on the weights only through the double backward
            penalty.backward()
            results.append([out.detach(), grad_x.detach(), layer.weight.grad.clone(), layer.bias.grad.clone()])
        for a, b in zip(*results):
            assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-12, atol=1e-12), (a - b).abs().max()


@pytest.fixture
def cuda_backend_flags():
    """Speed(..., cuda) sets torch.backends flags (TF32, cuDNN benchmark): put them back for the other tests."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


@pytest.mark.parametrize("value,cpu,cuda,cuda_compiled", [("auto", False, True, False), ("true", True, True, True),
                                                          ("false", False, False, False)])
def test_gemm_first_conv_switch(tiny_config, cuda_backend_flags, value, cpu, cuda, cuda_compiled):
    """auto: on CUDA, not under compile (never measured together), off on CPUs (slower there: docs/benchmarks.md);
    true and false as given (YAML's booleans reach the str field as 'True' and 'False'). Speed only reads the
    device's type, so a CUDA device needs no GPU here."""
    from distgan.engine.speed import Speed

    speed = tiny_config(f"speed.gemm_first_conv={value}").speed
    compiled = tiny_config(f"speed.gemm_first_conv={value}", "speed.compile=true").speed
    assert Speed(speed, torch.device("cpu")).gemm_first_conv is cpu
    assert Speed(speed, torch.device("cuda")).gemm_first_conv is cuda
    assert Speed(compiled, torch.device("cuda")).gemm_first_conv is cuda_compiled


def test_gemm_first_conv_under_autocast_matches_conv2d():
    """Under bf16 autocast: a bf16 output like conv2d's, within bf16 rounding of it; float64 is left alone."""
    from distgan.engine.gemm_conv import GemmConv2d

    conv, gemm = torch.nn.Conv2d(3, 8, 4, 2, 1), GemmConv2d(3, 8, 4, 2, 1)
    gemm.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = gemm(x), conv(x)
        assert gemm.double()(x.double()).dtype == conv.double()(x.double()).dtype == torch.float64
    assert a.dtype == b.dtype == torch.bfloat16
    assert (a.float() - b.float()).abs().max() <= 0.02 * b.float().abs().max()


def test_gemm_first_conv_training_steps_match(tiny_config):
    """Two full train steps with and without speed.gemm_first_conv, in float64: the same critic gradients; and
    a checkpoint of either form loads into the other and gives the same scores."""
    worst = worst_gradient_difference(tiny_config, "speed.gemm_first_conv")
    print(f"gemm vs nn.Conv2d first conv: max relative gradient difference {worst:.1e}")
    assert worst < 1e-9
    from distgan.engine.gemm_conv import GemmConv2d

    cfg = tiny_config("model.critic_dropout=0")
    gemm_state = TrainState.create(tiny_config("speed.gemm_first_conv=true", "model.critic_dropout=0"),
                                   torch.device("cpu"), Dist())
    plain = TrainState.create(cfg, torch.device("cpu"), Dist())
    assert isinstance(gemm_state.D.net[0], GemmConv2d) and not isinstance(plain.D.net[0], GemmConv2d)
    # a checkpoint of either form loads into the other and scores the same
    torch.nn.init.normal_(plain.D.net[0].weight)
    gemm_state.D.load_state_dict(plain.D.state_dict())
    x = torch.randn(4, 3, 16, 16)
    assert torch.allclose(gemm_state.D(x), plain.D(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", [torch.nn.Conv2d(3, 4, 3, dilation=2), torch.nn.Conv2d(4, 4, 3, groups=2),
                                  torch.nn.Conv2d(3, 4, 3, padding="same"),
                                  torch.nn.Conv2d(3, 4, 3, padding_mode="reflect"),
                                  torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv2d(3, 4, 3))],
                         ids=["dilation", "groups", "same", "reflect", "parametrized"])
def test_gemm_first_conv_refuses_what_it_does_not_compute(conv):
    from distgan.engine.gemm_conv import use_gemm_first_conv

    with pytest.raises(ValueError, match="gemm_first_conv needs a plain"):
        use_gemm_first_conv(torch.nn.Sequential(conv))
