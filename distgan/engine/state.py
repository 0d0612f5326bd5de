"""Everything a run needs to continue exactly where it stopped: networks, optimizers, EMA, counters, RNGs."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from distgan.config import Config
from distgan.engine.distributed import Dist
from distgan.engine.noise import SlicedNoise
from distgan.engine.speed import Speed
from distgan.engine.sync_bn import convert_sync_batchnorm
from distgan.models import Critic, Generator, build_models
from distgan.objectives import Objective, build_objective


@dataclass
class TrainState:
    G: Generator
    D: Critic
    G_ema: Generator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    noise: SlicedNoise
    step: int = 0  # generator updates done
    critic_steps: int = 0
    images_seen: int = 0  # real images consumed, all ranks together
    rollbacks: int = 0  # non-finite losses recovered from by reloading a checkpoint (train.on_nonfinite=rollback)
    best: dict = field(default_factory=dict)  # the best evaluation so far: {"metric", "value", "step"}
    data_state: dict = field(default_factory=dict)  # position of the real-data stream (per rank)
    speed: Speed = field(default_factory=Speed)  # the fast path's switches (engine/speed.py)
    objective: Optional[Objective] = None  # the losses and the penalty (train.objective)
    G_compiled: Optional[nn.Module] = None  # with speed.compile: torch.compile(G), sharing G's parameters
    D_compiled: Optional[nn.Module] = None

    @staticmethod
    def create(cfg: Config, device: torch.device, dist: Dist) -> "TrainState":
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank (and rank 0 broadcasts anyway)
        G, D = build_models(cfg.model)
        if cfg.model.sync_bn:
            convert_sync_batchnorm(G)
        speed = Speed(cfg.speed, device)
        G, D = speed.prepare(G.to(device)), speed.prepare_critic(D.to(device))
        dist.broadcast_module(G)
        dist.broadcast_module(D)
        G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        t = cfg.train
        opt_g = speed.adam(G.parameters(), t.lr_g, (t.beta1, t.beta2))
        opt_d = speed.adam(D.parameters(), t.lr_d, (t.beta1, t.beta2))
        # Dropout masks come from the global RNG: different per rank, like different samples.
        torch.manual_seed(t.seed + 1_000_003 * (dist.rank + 1))
        noise = SlicedNoise(t.seed, dist.rank, dist.world_size, device)
        compiled = (torch.compile(G), torch.compile(D)) if speed.compile else (None, None)
        return TrainState(G, D, G_ema, opt_g, opt_d, noise, speed=speed, objective=build_objective(t),
                          G_compiled=compiled[0], D_compiled=compiled[1])

    def state_dict(self) -> dict[str, Any]:
        state = {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "noise": self.noise.state_dict(),
            "step": self.step,
            "critic_steps": self.critic_steps,
            "images_seen": self.images_seen,
            "rollbacks": self.rollbacks,
            "best": dict(self.best),
        }
        return state

    def rank_state(self) -> dict[str, Any]:
        """What differs between ranks: the data position and the RNG behind dropout masks."""
        state = {"data_state": self.data_state, "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state()
        return state

    def load_rank_state(self, state: dict[str, Any]) -> None:
        self.data_state = dict(state.get("data_state", {}))
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])

    def apply_hyperparameters(self, t) -> None:
        """The config's learning rates and betas on the optimizers: a restore set the checkpoint's."""
        for opt, lr in ((self.opt_g, t.lr_g), (self.opt_d, t.lr_d)):
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, (t.beta1, t.beta2)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.noise.load_state_dict(state["noise"])
        self.step = int(state["step"])
        self.critic_steps = int(state["critic_steps"])
        self.images_seen = int(state["images_seen"])
        self.rollbacks = int(state.get("rollbacks", 0))
        self.best = dict(state.get("best", {}))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model for the parameters; buffers copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))
