"""One training step: n_critic critic updates, then one generator update (Algorithm 1 of Gulrajani et al.); the
losses are the run's objective's (distgan/objectives/)."""

from __future__ import annotations

from typing import Callable

import torch

from distgan.config import TrainConfig
from distgan.engine.distributed import Dist, split
from distgan.engine.speed import at_least_fp32, no_timer
from distgan.engine.state import TrainState, update_ema

RealBatches = Callable[[], torch.Tensor]  # returns this rank's next real batch, float in [-1, 1], on the device


def grad_norm(module: torch.nn.Module) -> torch.Tensor:
    grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())


def critic_backward(state: TrainState, real: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, weight: float,
                    critic_step: int) -> dict[str, torch.Tensor]:
    """One critic update up to its gradients (of this rank's share of the loss); metrics undetached."""
    G, D, speed = state.G, state.D, state.speed
    # first-order uses may go through the compiled modules; the penalty's double backward needs the eager critic
    G_fwd = state.G_compiled if state.G_compiled is not None else G
    D_fwd = state.D_compiled if state.D_compiled is not None else D
    with torch.no_grad(), speed.autocast():
        fake = speed.layout(at_least_fp32(G_fwd(z)))
    with speed.autocast():
        if speed.fused_critic_forward:  # no batch statistics in the critic: one forward, same scores
            real_scores, fake_scores = at_least_fp32(D_fwd(torch.cat([real, fake]))).split(real.shape[0])
        else:
            real_scores, fake_scores = at_least_fp32(D_fwd(real)), at_least_fp32(D_fwd(fake))
        loss, metrics = state.objective.critic_loss(D, real, fake, real_scores, fake_scores, alpha, critic_step)
    state.opt_d.zero_grad(set_to_none=True)
    # ONE backward through loss and penalty (the penalty's input gradient was create_graph)
    (loss * weight).backward()
    return metrics


def train_step(state: TrainState, next_real: RealBatches, t: TrainConfig, dist: Dist,
               timer=no_timer) -> dict[str, torch.Tensor]:
    """This rank's metrics as 0-d tensors, with no host sync; timer(phase) wraps each phase."""
    G, D, speed = state.G, state.D, state.speed
    G_fwd = state.G_compiled if state.G_compiled is not None else G
    D_fwd = state.D_compiled if state.D_compiled is not None else D
    global_batch = t.batch_size
    weight = split(global_batch, dist.rank, dist.world_size)[1] / global_batch  # this rank's share of the batch
    z_dim = G.z_dim
    sums: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0) + value.detach() / t.n_critic

    D.requires_grad_(True)
    real = None
    for i in range(t.n_critic):
        if real is None or t.fresh_real_per_critic_step:
            with timer("data"):
                real = speed.layout(next_real())
        with timer("critic"):
            z = state.noise.latents(global_batch, z_dim)
            alpha = state.noise.alphas(global_batch)  # drawn also when unused: the same stream for every gp_every
            critic_metrics = critic_backward(state, real, z, alpha, weight, state.critic_steps)
        with timer("allreduce"):
            dist.sum_grads(D)
        with timer("critic"):
            add("grad_norm/critic", grad_norm(D))
            state.opt_d.step()
            state.critic_steps += 1
            for name, value in critic_metrics.items():
                add(name, value)

    # Generator step: the critic is frozen, so backward fills only G's gradients
    with timer("generator"):
        state.opt_d.zero_grad(set_to_none=True)  # frees the critic's gradients for the generator step
        D.requires_grad_(False)
        with speed.autocast():
            loss_g = state.objective.generator_loss(at_least_fp32(D_fwd(G_fwd(state.noise.latents(global_batch,
                                                                                                  z_dim)))))
        state.opt_g.zero_grad(set_to_none=True)
        (loss_g * weight).backward()
    with timer("allreduce"):
        dist.sum_grads(G)
    with timer("generator"):
        sums["grad_norm/generator"] = grad_norm(G)
        state.opt_g.step()
        state.opt_g.zero_grad(set_to_none=True)  # frees them for the critic phase, whose fakes carry no graph
        D.requires_grad_(True)
        update_ema(state.G_ema, G, t.ema_decay)
        state.step += 1
        sums["loss/generator"] = loss_g.detach()
    return sums
