"""NaN or Inf in a loss or gradient norm, noticed on the device without a host sync; checked before every
checkpoint, so a diverged state is never saved."""

from __future__ import annotations

import math
from typing import Optional

import torch

from distgan.engine.distributed import Dist
from distgan.errors import Diverged  # noqa: F401  (its old home: searches saved before the move still unpickle)

GRADIENT_NORMS = ("grad_norm/critic", "grad_norm/generator")


class NonFiniteWatch:
    def __init__(self, device: torch.device, losses: tuple[str, ...] = ("loss/critic", "loss/generator")):
        """losses: the objective's watched metrics, besides the gradient norms."""
        self.device, self.watched = device, (*losses, *GRADIENT_NORMS)
        self.reset()

    def reset(self) -> None:
        self.first_step = torch.zeros((), dtype=torch.int64, device=self.device)  # 0: everything finite so far
        self.values = torch.zeros(len(self.watched), device=self.device)

    def observe(self, step: int, metrics: dict[str, torch.Tensor]) -> None:
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in self.watched])
        first = (self.first_step == 0) & ~torch.isfinite(values).all()
        self.first_step = torch.where(first, torch.full_like(self.first_step, step), self.first_step)
        self.values = torch.where(first, values, self.values)

    def check(self, dist: Dist) -> Optional[str]:
        """None while all is finite on every rank, else one line saying where."""
        mine = (int(self.first_step.item()), self.values.cpu().tolist(), dist.rank)
        bad = [r for r in dist.gather(mine) if r[0] > 0]
        if not bad:
            return None
        step, values, rank = min(bad)
        name, value = next((n, v) for n, v in zip(self.watched, values) if not math.isfinite(v))
        where = f" on rank {rank}" if dist.active else ""
        return f"non-finite {name} = {value} at step {step}{where}"
