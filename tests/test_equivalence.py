"""N ranks make the same update as one process with the whole global batch (docs/design.md), also with uneven
shares (64 over 3 ranks: 22 + 21 + 21) and across a change of world size.

gloo processes and one process run the real train_step on the same real images, latents and alphas (noise is
drawn for the global batch, each rank keeps its rows), with dropout 0 and synchronized BatchNorm, for full
n_critic/1 steps, in float64. Compared, with a max relative difference < 1e-5:
- the gradients each optimizer step receives (after the all-reduce), critic and generator, at every update:
  Adam would hide a wrong gradient scale (a missing 1/world_size moves Adam's weights by about the tolerance
  only), the gradients themselves do not;
- every parameter and the EMA at the end.
With the gradient all-reduce switched off (Dist(sync_grads=False)) the same comparison must fail, and so must the
plain (unweighted) mean of the uneven ranks' gradients.

Why float64: the equivalence is exact arithmetic, and float64 shows it (differences ~1e-15). In float32 the
rounding differs with the order of the sums (the batch split over ranks, the number of threads), and Adam
amplifies it over the steps: the same runs differ by 2e-6 to 1.2e-5, too close to the tolerance to tell a bug
from rounding.
"""

import pytest
import torch

from distgan.config import load_config
from distgan.engine.checkpoint import build_payload, restore
from distgan.engine.distributed import Dist, split
from distgan.engine.state import TrainState
from distgan.engine.step import train_step
from gloo import spawn

STEPS, N_CRITIC = 3, 2


@pytest.fixture(autouse=True)
def float64():
    """This process in float64 for the test (spawned ranks set it themselves)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make_config(batch: int):
    return load_config(None, [
        "model.z_dim=8", "model.width=4", "model.image_size=16", "model.critic_dropout=0.0", "model.sync_bn=true",
        f"train.batch_size={batch}", f"train.n_critic={N_CRITIC}", "train.device=cpu",
        "train.ema_decay=0.5", "run.mode=local",
    ])


def real_batches(batch: int, steps: int = STEPS) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return [torch.rand(batch, 3, 16, 16, generator=g) * 2 - 1 for _ in range(steps * N_CRITIC)]


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


def record_local_gradients(dist: Dist, out: dict, share: float) -> None:
    """Each rank's own critic gradients before the all-reduce (of its own mean loss: the backward ran on the loss
    times its share), as local.<update>.<param>."""
    total = dist.sum_grads
    count = [0]

    def recorded(module):
        if module.__class__.__name__ == "Critic":
            for i, p in enumerate(module.parameters()):
                out[f"local.{count[0]}.{i}"] = p.grad.detach().clone() / share
            count[0] += 1
        return total(module)

    dist.sum_grads = recorded


def snapshot(state: TrainState, grads: dict) -> dict[str, torch.Tensor]:
    out = {f"G.{k}": v for k, v in state.G.state_dict().items()}
    out.update({f"D.{k}": v for k, v in state.D.state_dict().items()})
    out.update({f"G_ema.{k}": v for k, v in state.G_ema.state_dict().items()})
    out.update(grads)
    return {k: v.clone() for k, v in out.items()}


def run_steps(rank: int, world: int, batch: int, sync_grads: bool = True, steps: int = STEPS,
              state: TrainState | None = None, first_batch: int = 0) -> tuple[TrainState, dict]:
    """`steps` train_steps on this rank's rows of the shared real batches (from number first_batch on)."""
    cfg = make_config(batch)
    dist = Dist(rank, world, sync_grads)  # sync_grads=False: the all-reduce removed
    state = state or TrainState.create(cfg, torch.device("cpu"), dist)
    grads: dict[str, torch.Tensor] = {}
    record_gradients(state.opt_d, "grad.D", grads)
    record_gradients(state.opt_g, "grad.G", grads)
    start, count = split(batch, rank, world)
    record_local_gradients(dist, grads, count / batch)
    shared = real_batches(batch, first_batch // N_CRITIC + steps)[first_batch:]
    batches = iter(b[start : start + count] for b in shared)
    for i in range(steps):
        metrics = train_step(state, lambda: next(batches), cfg.train, dist)
        for name, value in dist.mean(metrics, count / batch).items():  # what the loop logs, averaged over ranks
            grads[f"logged.{i}.{name}"] = torch.tensor(value, dtype=torch.float64)
    return state, grads


def rank_fn(rank: int, world: int, batch: int, sync_grads: bool, out_dir: str) -> None:
    torch.set_default_dtype(torch.float64)
    state, grads = run_steps(rank, world, batch, sync_grads)
    torch.save(snapshot(state, grads), f"{out_dir}/rank{rank}.pt")


def max_rel_diff(a: dict, b: dict, prefix: str = "") -> float:
    worst = 0.0
    for k in b:
        if k.startswith(prefix) and b[k].dtype.is_floating_point:
            scale = b[k].abs().max().clamp_min(1e-8)
            worst = max(worst, ((a[k] - b[k]).abs().max() / scale).item())
    return worst


def ranks(tmp_path, world: int, batch: int, sync_grads: bool = True) -> list[dict]:
    spawn(rank_fn, world, batch, sync_grads, str(tmp_path))
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def single(batch: int, steps: int = STEPS) -> dict:
    state, grads = run_steps(0, 1, batch, steps=steps)
    return snapshot(state, grads)


def without_local(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("local.")}


@pytest.mark.parametrize("world, batch", [(2, 8), (3, 64)])
def test_ranks_equal_one_process(tmp_path, world, batch):
    one = single(batch)
    many = ranks(tmp_path, world, batch)
    assert [split(batch, r, world)[1] for r in range(world)] == ([4, 4] if world == 2 else [22, 21, 21])
    for other in many[1:]:
        assert max_rel_diff(without_local(other), without_local(many[0])) == 0.0, "replicas diverged"
    critic_params = len(list(TrainState.create(make_config(batch), torch.device("cpu"), Dist()).D.parameters()))
    assert sum(k.startswith("grad.D.") for k in one) == STEPS * N_CRITIC * critic_params  # every update seen
    grad_diff = max_rel_diff(many[0], without_local(one), "grad.")
    weight_diff = max_rel_diff(many[0], without_local(one))
    print(f"{world} ranks, batch {batch}: max relative difference to 1 process: gradients {grad_diff:.2e}, "
          f"all {weight_diff:.2e}")
    assert grad_diff < 1e-5 and weight_diff < 1e-5  # the logged losses and norms too (weight_diff: every key)
    assert sum(k.startswith("logged.") for k in one) >= STEPS * 6
    # the comparison is not vacuous: the weights moved well beyond the tolerance
    start = TrainState.create(make_config(batch), torch.device("cpu"), Dist())
    initial = {f"G.{k}": v for k, v in start.G.state_dict().items()}
    assert max_rel_diff({k: one[k] for k in initial}, initial) > 1e-3
    if world == 3:  # the first critic update: the plain mean of the uneven ranks' gradients is not the answer
        plain = {k.replace("local.0.", "grad.D.0."): sum(m[k] for m in many) / world
                 for k in many[0] if k.startswith("local.0.")}
        unweighted = max_rel_diff(plain, {k: one[k] for k in plain})
        print(f"the unweighted mean is off by {unweighted:.2e}")
        assert unweighted > 1e-3


def test_without_all_reduce_the_ranks_differ(tmp_path):
    one = single(8)
    many = ranks(tmp_path, 2, 8, sync_grads=False)
    diff = max_rel_diff(many[0], without_local(one), "grad.")
    print(f"max relative difference of the gradients without all-reduce: {diff:.2e}")
    assert diff > 1e-2


def two_then_save(rank: int, world: int, batch: int, k: int, out: str) -> None:
    torch.set_default_dtype(torch.float64)
    state, _ = run_steps(rank, world, batch, steps=k)
    dist = Dist(rank, world)
    ranks_state = dist.gather(state.rank_state())
    if rank == 0:
        torch.save(build_payload(state, make_config(batch), ranks_state), out)


def test_world_size_change_resumes_exactly(tmp_path):
    """2 workers for k steps, a checkpoint, then 1 worker from it for k more = 1 process for 2k steps."""
    batch, k = 8, 2
    spawn(two_then_save, 2, batch, k, str(tmp_path / "ckpt.pt"))
    payload = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    cfg = make_config(batch)
    resumed = TrainState.create(cfg, torch.device("cpu"), Dist())
    assert restore(resumed, payload, Dist()) is False, "another world size: the ranks' own states do not apply"
    assert resumed.step == k
    resumed, _ = run_steps(0, 1, batch, steps=k, state=resumed, first_batch=k * N_CRITIC)
    straight = single(batch, steps=2 * k)
    diff = max_rel_diff(snapshot(resumed, {}), {k_: v for k_, v in straight.items()
                                                if not k_.startswith(("grad", "local", "logged"))})
    print(f"2 workers then 1 vs 1 process: max relative difference {diff:.2e}")
    assert resumed.step == 2 * k and diff < 1e-5
