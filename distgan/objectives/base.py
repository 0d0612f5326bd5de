"""What an objective is: the critic's and the generator's losses, its penalty, and the names of what it logs."""

from __future__ import annotations

from typing import Callable, Protocol

import torch

Critic = Callable[[torch.Tensor], torch.Tensor]


class Objective(Protocol):
    critic_metrics: tuple[str, ...]  # what critic_loss returns, averaged over the n_critic updates when logged
    watched: tuple[str, ...]  # the NaN watch's (the step adds the gradient norms)
    progress: tuple[tuple[str, str], ...]  # (label, metric) pairs of the progress line
    every: int  # the penalty runs on critic updates 0, every, 2 every, ...: a CUDA graph per phase

    def critic_loss(self, D: Critic, real: torch.Tensor, fake: torch.Tensor, real_scores: torch.Tensor,
                    fake_scores: torch.Tensor, alpha: torch.Tensor, critic_step: int
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the loss to back-propagate, its critic_metrics); alpha: one U(0, 1) per sample, drawn by the step."""

    def generator_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        """The generator's loss from the critic's scores of its samples."""
