"""Hinge loss with the R1 penalty (Mescheder et al. 2018), lazy like WGAN-GP's: gamma is train.gp_weight,
the interval train.gp_every."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distgan.losses import generator_loss


def r1_penalty(D, real: torch.Tensor) -> torch.Tensor:
    """mean over samples of ||dD(x)/dx||^2 at the real samples, differentiable (create_graph) in one backward."""
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    grad = grad.float() if grad.dtype in (torch.bfloat16, torch.float16) else grad  # the norm in fp32 at least
    return grad.flatten(1).pow(2).sum(dim=1).mean()


class HingeR1:
    critic_metrics = ("loss/critic", "loss/r1", "margin")
    watched = ("loss/critic", "loss/r1", "loss/generator")
    progress = (("d", "loss/critic"), ("margin", "margin"), ("r1", "loss/r1"), ("g", "loss/generator"))

    def __init__(self, train_cfg):
        self.gamma, self.every = train_cfg.gp_weight, train_cfg.gp_every

    def critic_loss(self, D, real, fake, real_scores, fake_scores, alpha, critic_step):
        r1 = r1_penalty(D, real) if critic_step % self.every == 0 else real_scores.new_zeros(())
        loss = F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean() + self.gamma / 2 * self.every * r1
        return loss, {"loss/critic": loss, "loss/r1": r1 * self.every, "margin": real_scores.mean() - fake_scores.mean()}

    def generator_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        return generator_loss(fake_scores)  # the hinge GAN's generator loss is WGAN's
