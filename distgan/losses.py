"""WGAN-GP losses (Gulrajani et al. 2017). Pure functions of tensors and modules: no Ray, no distributed code.

Every loss is a mean over the local batch; weighted by each rank's share of the batch and summed over ranks, the
ranks' gradients are the gradient of the whole batch: this is what makes N workers equal one process
(tests/test_equivalence.py).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

Critic = Callable[[torch.Tensor], torch.Tensor]


def sample_alpha(n: int, like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One alpha ~ U(0, 1) per sample, shaped (n, 1, 1, ...) to broadcast over the sample's C, H, W."""
    alpha = torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)
    return alpha.view(n, *([1] * (like.dim() - 1)))


def gradient_penalty(
    critic: Critic,
    real: torch.Tensor,
    fake: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    alpha: Optional[torch.Tensor] = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    """GP = mean over samples of (||dD(x_hat)/dx_hat||_2 - 1)^2, x_hat = real + alpha * (fake - real).

    critic: maps (N, C, H, W) to N scores. real, fake: (N, C, H, W); fake should be detached from the generator.
    generator: a torch.Generator for the alphas (one U(0, 1) scalar per sample), so they can be replayed.
    alpha: the alphas themselves, shaped (N, 1, 1, 1), when the caller draws them (distributed training does).
    eps: inside the square root, keeps the norm differentiable where the gradient is zero.

    The input gradient is taken out of place with create_graph=True, so the returned scalar can be added to the
    critic loss and differentiated in ONE backward pass (a second backward would break gradient all-reduce).
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must have the same shape")
    if alpha is None:
        alpha = sample_alpha(real.shape[0], real, generator)
    x_hat = (real + alpha * (fake - real)).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(outputs=scores.sum(), inputs=x_hat, create_graph=True)
    norm = torch.sqrt(grad.flatten(1).pow(2).sum(dim=1) + eps)
    return (norm - 1.0).pow(2).mean()


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """mean D(fake) - mean D(real): the negative Wasserstein estimate. Add gp_weight * GP for the full loss."""
    return fake_scores.mean() - real_scores.mean()


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-mean D(G(z))."""
    return -fake_scores.mean()
