"""N ranks with batch B/N each make the same update as one process with batch B (docs/design.md).

Two gloo processes and one process run the real train_step on the same real images, latents and alphas
(noise is drawn for the global batch and sliced per rank), with dropout 0 and synchronized BatchNorm, for
three full n_critic/1 steps. Compared, with a max relative difference < 1e-5:
- the gradients each optimizer step receives (after the all-reduce), critic and generator, at every update:
  Adam would hide a wrong gradient scale (a missing 1/world_size moves Adam's weights by about the tolerance
  only), the gradients themselves do not;
- every parameter and the EMA at the end.
With the gradient all-reduce switched off (Dist(sync_grads=False)) the same comparison must fail.
"""

import torch

from distgan.config import load_config
from distgan.engine.distributed import Dist
from distgan.engine.state import TrainState
from distgan.engine.step import train_step
from gloo import spawn

GLOBAL_BATCH, STEPS, N_CRITIC = 8, 3, 2


def make_config():
    return load_config(None, [
        "model.z_dim=8", "model.width=4", "model.image_size=16", "model.critic_dropout=0.0", "model.sync_bn=true",
        f"train.batch_size={GLOBAL_BATCH}", f"train.n_critic={N_CRITIC}", "train.device=cpu",
        "train.ema_decay=0.5", "run.mode=local",
    ])


def real_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return [torch.rand(GLOBAL_BATCH, 3, 16, 16, generator=g) * 2 - 1 for _ in range(STEPS * N_CRITIC)]


def record_gradients(optimizer: torch.optim.Optimizer, name: str, out: dict) -> None:
    """Keep a copy of the gradients every optimizer.step() is given, as name.<update>.<param>."""
    step = optimizer.step
    count = [0]

    def recorded(*args, **kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for i, p in enumerate(params):
            out[f"{name}.{count[0]}.{i}"] = p.grad.detach().clone()
        count[0] += 1
        return step(*args, **kwargs)

    optimizer.step = recorded


def run_steps(rank: int, world: int, sync_grads: bool) -> dict[str, torch.Tensor]:
    cfg = make_config()
    dist = Dist(rank, world, sync_grads)  # sync_grads=False: the all-reduce removed
    state = TrainState.create(cfg, torch.device("cpu"), dist)
    grads: dict[str, torch.Tensor] = {}
    record_gradients(state.opt_d, "grad.D", grads)
    record_gradients(state.opt_g, "grad.G", grads)
    n = GLOBAL_BATCH // world
    batches = iter(b[rank * n : (rank + 1) * n] for b in real_batches())
    for _ in range(STEPS):
        train_step(state, lambda: next(batches), cfg.train, dist)
    out = {f"G.{k}": v for k, v in state.G.state_dict().items()}
    out.update({f"D.{k}": v for k, v in state.D.state_dict().items()})
    out.update({f"G_ema.{k}": v for k, v in state.G_ema.state_dict().items()})
    out.update(grads)
    return {k: v.clone() for k, v in out.items()}


def rank_fn(rank: int, world: int, sync_grads: bool, out_dir: str) -> None:
    torch.save(run_steps(rank, world, sync_grads), f"{out_dir}/rank{rank}.pt")


def max_rel_diff(a: dict, b: dict, prefix: str = "") -> float:
    worst = 0.0
    for k in a:
        if k.startswith(prefix) and a[k].dtype.is_floating_point:
            scale = b[k].abs().max().clamp_min(1e-8)
            worst = max(worst, ((a[k] - b[k]).abs().max() / scale).item())
    return worst


def two_ranks(tmp_path, sync_grads: bool) -> list[dict]:
    spawn(rank_fn, 2, sync_grads, str(tmp_path))
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


def test_two_ranks_equal_one_process(tmp_path):
    single = run_steps(0, 1, sync_grads=True)
    ranks = two_ranks(tmp_path, sync_grads=True)
    assert max_rel_diff(ranks[0], ranks[1]) == 0.0, "replicas diverged"
    critic_params = len(list(TrainState.create(make_config(), torch.device("cpu"), Dist()).D.parameters()))
    assert sum(k.startswith("grad.D.") for k in single) == STEPS * N_CRITIC * critic_params  # every update seen
    grad_diff = max_rel_diff(ranks[0], single, "grad.")
    weight_diff = max_rel_diff(ranks[0], single)
    print(f"max relative difference, 2 ranks vs 1 process: gradients {grad_diff:.2e}, all {weight_diff:.2e}")
    assert grad_diff < 1e-5 and weight_diff < 1e-5
    # the comparison is not vacuous: the weights moved well beyond the tolerance
    start = TrainState.create(make_config(), torch.device("cpu"), Dist())
    initial = {f"G.{k}": v for k, v in start.G.state_dict().items()}
    assert max_rel_diff({k: single[k] for k in initial}, initial) > 1e-3


def test_without_all_reduce_the_ranks_differ(tmp_path):
    single = run_steps(0, 1, sync_grads=True)
    ranks = two_ranks(tmp_path, sync_grads=False)
    diff = max_rel_diff(ranks[0], single, "grad.")
    print(f"max relative difference of the gradients without all-reduce: {diff:.2e}")
    assert diff > 1e-2
