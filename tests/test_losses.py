"""The gradient penalty against independent computations, and the alpha distribution."""

import math

import pytest
import torch

from distgan.losses import critic_loss, generator_loss, gradient_penalty
from distgan.models import Critic


class Linear(torch.nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x):
        return (x.flatten(1) * self.w.flatten()).sum(1)


@pytest.mark.parametrize("batch", [1, 3, 17])
@pytest.mark.parametrize("scale", [0.01, 0.7, 1.0, 5.0])
def test_linear_critic_penalty_is_norm_minus_one_squared(batch, scale):
    torch.manual_seed(batch)
    w = torch.randn(3, 8, 8, dtype=torch.float64)
    w = w / w.norm() * scale
    real, fake = torch.randn(2, batch, 3, 8, 8, dtype=torch.float64)
    gp = gradient_penalty(Linear(w), real, fake)
    # eps = 1e-12 inside the square root is the only difference from (||w|| - 1)^2
    assert gp.item() == pytest.approx((scale - 1.0) ** 2, abs=1e-9)


def test_penalty_matches_per_sample_loop_on_conv_critic():
    torch.manual_seed(0)
    critic = Critic(width=4, image_size=16, channels=3, dropout=0.0).double()
    real, fake = torch.randn(2, 6, 3, 16, 16, dtype=torch.float64)
    alpha = torch.rand(6, 1, 1, 1, dtype=torch.float64)
    gp = gradient_penalty(critic, real, fake, alpha=alpha)
    per_sample = []
    for i in range(6):
        x = (real[i : i + 1] + alpha[i] * (fake[i : i + 1] - real[i : i + 1])).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x).sum(), x)
        per_sample.append((g.norm() - 1) ** 2)
    assert gp.item() == pytest.approx(torch.stack(per_sample).mean().item(), rel=1e-10)
    # differentiable: the penalty has a gradient with respect to the critic's weights (create_graph=True)
    gp.backward()
    weights = [p for name, p in critic.named_parameters() if name.endswith("weight")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


def test_alpha_is_uniform_one_per_sample():
    """With real = 0 and fake = 1, x_hat is alpha itself: record it through the public function."""
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            seen.append(x.detach().clone())
            return (x.flatten(1) * self.w).sum(1)

    n = 20000
    real, fake = torch.zeros(n, 2, 3, 3), torch.ones(n, 2, 3, 3)
    gradient_penalty(Recorder(), real, fake, generator=torch.Generator().manual_seed(1))
    x_hat = seen[0]
    alphas = x_hat[:, 0, 0, 0]
    assert torch.equal(x_hat, alphas.view(n, 1, 1, 1).expand_as(x_hat)), "one alpha per sample, over C, H, W"
    assert alphas.min() >= 0 and alphas.max() <= 1
    # Kolmogorov-Smirnov against U(0, 1): critical value at p = 0.001 is 1.95 / sqrt(n)
    s = torch.sort(alphas.double()).values
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = torch.max(torch.maximum(grid - s, s - (grid - 1.0 / n))).item()
    assert ks < 1.95 / math.sqrt(n), f"KS statistic {ks}"
    # a normal alpha (the Keras bug) would fail: negative values and a KS far above the bound
    assert abs(alphas.mean().item() - 0.5) < 0.01 and abs(alphas.var().item() - 1 / 12) < 0.003


def test_losses_signs():
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([1.0, -1.0])
    assert critic_loss(real, fake).item() == pytest.approx(0.0 - 3.0)
    assert generator_loss(fake).item() == pytest.approx(0.0)
    assert generator_loss(torch.tensor([3.0])).item() == pytest.approx(-3.0)


def test_under_bf16_autocast_the_penalty_norm_is_taken_in_fp32():
    """speed.precision=bf16 runs the critic under autocast, and step.py computes the penalty inside it: the input
    gradient comes back as fp32 (x_hat is fp32), and its norm over 768 values and the mean must be taken in fp32.
    A critic whose input gradient is w for every sample: under autocast w is rounded to bf16, and nothing else
    may be (the norm summed in bf16 is off by about 1e-3)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3 * 16 * 16, 1, generator=g) * 0.06
    critic = lambda x: (x.flatten(1) @ w).squeeze(1)  # noqa: E731  (a matmul: autocast runs it in bf16)
    real, fake = torch.rand(8, 3, 16, 16, generator=g), torch.rand(8, 3, 16, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gp = gradient_penalty(critic, real, fake, generator=g)
    norm = w.bfloat16().double().norm()
    assert gp.dtype == torch.float32
    assert gp.item() == pytest.approx(((norm - 1) ** 2).item(), rel=1e-5)
