"""The fused LeakyReLU + dropout (engine/fused_act.py) against the eager ops it replaces. On this CPU machine its
Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, conftest.py): slow, so the tensors are small.

Tolerances: float64 through gradcheck and gradgradcheck; float32 within 1e-6 relative of the eager ops (the same
products, other rounding order at most); bfloat16 within one bfloat16 step (2^-7 relative: Triton's interpreter truncates, a GPU rounds) of the float32 result
of the same inputs. Dropout: torch's and Triton's random streams differ, so the masks are not torch's; the math is
stated and tested instead: every element kept with probability 1 - p, independently, kept values scaled by 1/(1-p),
the same mask in the forward, the backward and the penalty's double backward.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from distgan.engine.fused_act import FusedLeakyDropout, leaky_dropout, use_fused_activations

SLOPE, P = 0.2, 0.3


def eager(x: torch.Tensor, keep: torch.Tensor, p: float = P) -> torch.Tensor:
    """The ops the fused function replaces, with its mask: LeakyReLU, then dropout."""
    return torch.nn.functional.leaky_relu(x, SLOPE) * keep.to(x.dtype) / (1 - p)


def penalty_like(f, x):
    """What the gradient penalty asks of an activation: its input gradient (create_graph), then the gradient of a
    function of that gradient with respect to the layer's weight w."""
    w = torch.linspace(0.5, 1.5, x.shape[1], dtype=x.dtype).view(1, -1, 1, 1).requires_grad_(True)
    x = x.detach().requires_grad_(True)
    y = f(x * w)
    (dx,) = torch.autograd.grad((y * y.detach().sin()).sum(), x, create_graph=True)
    (dw,) = torch.autograd.grad(dx.pow(2).sum(), w)
    return y, dx, dw


@pytest.mark.parametrize("p", [0.0, P])
def test_gradcheck_and_gradgradcheck_in_float64(p):
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor([11])
    f = lambda t: leaky_dropout(t, SLOPE, p, seed)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_forward_backward_and_double_backward_equal_the_eager_ops(dtype, rtol):
    x = torch.randn(4, 6, 7, 7, dtype=dtype)
    seed = torch.tensor([3])
    _, code = leaky_dropout(x, SLOPE, P, seed, return_code=True)
    keep = code != 0
    fused = penalty_like(lambda t: leaky_dropout(t, SLOPE, P, seed), x)
    reference = penalty_like(lambda t: eager(t, keep), x)
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol)


def test_bfloat16_within_one_rounding_of_float32():
    x = torch.randn(4, 6, 7, 7).to(torch.bfloat16)
    seed = torch.tensor([5])
    y16 = leaky_dropout(x, SLOPE, P, seed)
    y32 = leaky_dropout(x.float(), SLOPE, P, seed)
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=2**-7, atol=1e-30)


def test_channels_last_inputs_keep_their_layout_and_values():
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    seed = torch.tensor([9])
    y, code = leaky_dropout(x, SLOPE, P, seed, return_code=True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, eager(x, code != 0))


def test_dropout_keeps_each_element_with_probability_1_minus_p_independently():
    x = torch.ones(200_000)
    _, code = leaky_dropout(x, SLOPE, P, torch.tensor([1]), return_code=True)
    keep = (code != 0).double()
    sigma = (P * (1 - P) / keep.numel()) ** 0.5
    assert abs(keep.mean().item() - (1 - P)) < 5 * sigma
    neighbours = torch.corrcoef(torch.stack([keep[:-1], keep[1:]]))[0, 1].item()
    assert abs(neighbours) < 5 / keep.numel() ** 0.5
    again = leaky_dropout(x, SLOPE, P, torch.tensor([1]), return_code=True)[1]
    other = leaky_dropout(x, SLOPE, P, torch.tensor([2]), return_code=True)[1]
    assert torch.equal(code, again) and not torch.equal(code, other)
    y = leaky_dropout(torch.tensor([1.0, -1.0] * 500), SLOPE, P, torch.tensor([4]))
    assert set(y.unique().tolist()) <= set(torch.tensor([0.0, 1 / (1 - P), -SLOPE / (1 - P)]).tolist())


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_the_penalty_backward_makes_no_zero_input_gradients(tiny_config):
    """The eager critic's penalty backward runs leaky_relu_backward's derivative, which materializes zeros for the
    input (zeros_like); the fused one runs only its gain kernel (Triton, invisible to the dispatcher here)."""
    from distgan.losses import gradient_penalty
    from distgan.models import build_models

    cfg = tiny_config("model.critic_dropout=0.3")
    critic = build_models(cfg.model)[1]
    fused = use_fused_activations(build_models(cfg.model)[1])
    fused.load_state_dict(critic.state_dict())
    real, fake = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    counts = {}
    for name, D in (("eager", critic), ("fused", fused)):
        with CountOps() as ops:
            gradient_penalty(D, real, fake, alpha=torch.full((4, 1, 1, 1), 0.5)).backward()
        counts[name] = ops.names
    assert "leaky_relu_backward" in " ".join(counts["eager"]) and "zeros_like" in " ".join(counts["eager"])
    assert not {n for n in counts["fused"] if "leaky_relu" in n or "zeros_like" in n or "dropout" in n}


def test_two_train_steps_equal_the_eager_steps(tiny_config):
    """speed.fused_activations=true (no dropout: torch's masks cannot be replayed) trains as the eager ops do:
    both networks within 1e-5 after two steps, and the state dict's layout unchanged."""
    from distgan.engine.distributed import Dist
    from distgan.engine.state import TrainState
    from distgan.engine.step import train_step

    states = {}
    for switch in ("false", "true"):
        cfg = tiny_config(f"speed.fused_activations={switch}", "model.critic_dropout=0.0")
        state = TrainState.create(cfg, torch.device("cpu"), Dist())
        batches = [torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(4)]
        for _ in range(2):
            train_step(state, batches.pop, cfg.train, Dist())
        states[switch] = state
    assert any(isinstance(m, FusedLeakyDropout) for m in states["true"].D.modules())
    for net in ("G", "D", "G_ema"):
        eager_sd, fused_sd = (getattr(states[s], net).state_dict() for s in ("false", "true"))
        assert eager_sd.keys() == fused_sd.keys()
        for key in eager_sd:
            torch.testing.assert_close(fused_sd[key].float(), eager_sd[key].float(), rtol=1e-5, atol=1e-6)


def test_forcing_it_on_a_cpu_without_the_interpreter_is_one_line(tiny_config, monkeypatch):
    from distgan.engine.speed import Speed
    from distgan.errors import ConfigError

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="^speed.fused_activations=true: its Triton kernels need CUDA"):
        Speed(tiny_config("speed.fused_activations=true").speed, torch.device("cpu"))
