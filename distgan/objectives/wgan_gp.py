"""WGAN-GP (Gulrajani et al. 2017), with the lazy penalty: the penalty on every gp_every-th update, k x lambda."""

from __future__ import annotations

import torch

from distgan.losses import critic_loss, generator_loss, gradient_penalty


class WGANGP:
    critic_metrics = ("loss/critic", "loss/gradient_penalty", "wasserstein")
    watched = ("loss/critic", "loss/gradient_penalty", "loss/generator")
    progress = (("d", "loss/critic"), ("w", "wasserstein"), ("gp", "loss/gradient_penalty"), ("g", "loss/generator"))

    def __init__(self, train_cfg):
        self.weight, self.every = train_cfg.gp_weight, train_cfg.gp_every

    def critic_loss(self, D, real, fake, real_scores, fake_scores, alpha, critic_step):
        penalize = critic_step % self.every == 0
        gp = gradient_penalty(D, real, fake, alpha=alpha) if penalize else real_scores.new_zeros(())  # fp32 norm
        loss = critic_loss(real_scores, fake_scores) + self.weight * self.every * gp
        # logged as k x the penalty on 1 update in k: the same mean as the paper's
        return loss, {"loss/critic": loss, "loss/gradient_penalty": gp * self.every,
                      "wasserstein": real_scores.mean() - fake_scores.mean()}

    def generator_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        return generator_loss(fake_scores)
