"""WGAN-GP losses (Gulrajani et al. 2017): pure tensor functions, each a mean over the local batch
(what makes N workers equal one process)."""

from __future__ import annotations

from typing import Callable, Optional

import torch

Critic = Callable[[torch.Tensor], torch.Tensor]


def sample_alpha(n: int, like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One alpha ~ U(0, 1) per sample, shaped to broadcast over C, H, W."""
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
    """GP = mean of (||dD(x_hat)/dx_hat||_2 - 1)^2, x_hat = real + alpha (fake - real); create_graph, so it
    joins the critic loss in ONE backward, as the gradient all-reduce needs."""
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
    """mean D(fake) - mean D(real): the negative Wasserstein estimate (add gp_weight * GP)."""
    return fake_scores.mean() - real_scores.mean()


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-mean D(G(z))."""
    return -fake_scores.mean()
