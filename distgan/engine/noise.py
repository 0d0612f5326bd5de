"""Latents and alphas drawn for the global batch from one seeded stream, each rank keeping its rows: a sample's
noise does not depend on the world size."""

from __future__ import annotations

import logging

import torch

from distgan.engine.distributed import split


log = logging.getLogger(__name__)


class SlicedNoise:
    def __init__(self, seed: int, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device, self.seed = rank, world_size, device, seed
        self.rng = torch.Generator(device).manual_seed(seed)

    def _slice(self, full: torch.Tensor) -> torch.Tensor:
        start, count = split(full.shape[0], self.rank, self.world_size)
        return full[start : start + count]

    def latents(self, global_batch: int, z_dim: int) -> torch.Tensor:
        return self._slice(torch.randn(global_batch, z_dim, generator=self.rng, device=self.device))

    def alphas(self, global_batch: int) -> torch.Tensor:
        """One U(0, 1) per sample, shaped (n, 1, 1, 1)."""
        return self._slice(torch.rand(global_batch, generator=self.rng, device=self.device)).view(-1, 1, 1, 1)

    def reseed(self, seed: int, step: int, salt: int) -> None:
        """A new stream after a rollback, so the failed stretch is not replayed."""
        self.rng.manual_seed(hash((seed, step, salt)) & 0x7FFF_FFFF_FFFF_FFFF)

    def state_dict(self) -> dict:
        return {"rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        try:
            self.rng.set_state(state["rng"])
        except RuntimeError:  # a state of another device's generator (a checkpoint from before noise moved there)
            log.warning("the checkpoint's latent stream was drawn on another device: re-seeded (the run goes on; "
                        "this resume is not bitwise)")
            self.rng.manual_seed((self.seed * 1_000_003 + 17) & 0x7FFF_FFFF_FFFF_FFFF)
