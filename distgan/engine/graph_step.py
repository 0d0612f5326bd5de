"""train_step on static buffers, captured as one CUDA graph and replayed (speed.cuda_graph): one launch for the
step's ~800 kernels, which otherwise leave the GPU waiting on the host."""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from distgan.config import TrainConfig
from distgan.engine.distributed import Dist
from distgan.engine.state import TrainState
from distgan.engine.step import train_step

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps before a capture: cuDNN's algorithm search, Adam's state, the allocator


class StaticStep:
    """train_step, one graph per lazy-penalty phase; invalidate() after a restore (new optimizer state)."""

    def __init__(self, state: TrainState, t: TrainConfig, dist: Dist, capture: bool):
        self.state, self.t, self.dist, self.capture = state, t, dist, capture
        self.batches_per_step = t.n_critic if t.fresh_real_per_critic_step else 1
        self.buffers: Optional[list[torch.Tensor]] = None
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}
        self.eager_steps = 0

    def invalidate(self) -> None:
        self.graphs.clear()
        self.eager_steps = 0

    def __call__(self, next_real: Callable[[], torch.Tensor]) -> dict[str, torch.Tensor]:
        batches = [next_real() for _ in range(self.batches_per_step)]
        if self.buffers is None:
            self.buffers = [self.state.speed.layout(torch.empty_like(b)) for b in batches]
        if any(b.shape != buf.shape for b, buf in zip(batches, self.buffers)):
            if self.capture:
                log.warning("speed.cuda_graph: the real batch changed shape (%s to %s): the step runs eagerly from "
                            "here on", tuple(self.buffers[0].shape), tuple(batches[0].shape))
                self.capture, self.graphs = False, {}
            self.buffers = [self.state.speed.layout(torch.empty_like(b)) for b in batches]
        for buffer, batch in zip(self.buffers, batches):
            buffer.copy_(batch, non_blocking=True)
        phase = self.state.critic_steps % self.state.objective.every  # which critic updates are penalized
        if not self.capture or (phase not in self.graphs and self.eager_steps < WARMUP_STEPS):
            self.eager_steps += 1
            return self._run()
        if phase not in self.graphs:
            self.graphs[phase] = self._capture()
        graph, outputs = self.graphs[phase]
        graph.replay()
        self.state.step += 1
        self.state.critic_steps += self.t.n_critic
        return outputs

    def _run(self) -> dict[str, torch.Tensor]:
        buffers = iter(self.buffers)
        return train_step(self.state, lambda: next(buffers), self.t, self.dist)

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]:
        """The step recorded, not run: the Python counters are put back."""
        state = self.state
        step, critic_steps = state.step, state.critic_steps
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(state.noise.rng)
        torch.cuda.synchronize()
        state.opt_d.zero_grad(set_to_none=True)  # the captured backward allocates the gradients it writes
        state.opt_g.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            outputs = self._run()
        state.step, state.critic_steps = step, critic_steps
        log.info("speed.cuda_graph: step captured (critic-step phase %d)", critic_steps % state.objective.every)
        return graph, outputs


def cuda_graph_refusal(cfg, device: torch.device) -> Optional[str]:
    """Why speed.cuda_graph cannot serve this run (the step then runs eagerly), or None."""
    if device.type != "cuda":
        return "CUDA graphs need CUDA"
    if cfg.speed.compile:
        return "speed.compile: compiled modules are not captured here"
    return None
