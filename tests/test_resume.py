"""Resume is exact: k steps, stop, resume to 2k equals 2k steps in one go, bitwise on CPU; and the resumed run
really resumes (it executes only the remaining k steps)."""

from pathlib import Path

import pytest
import torch

import distgan.engine.loop
from distgan.config import load_config
from distgan.engine.checkpoint import FolderCheckpoints
from distgan.engine.distributed import Dist
from distgan.engine.loop import train
from distgan.launch.local import train_local
from gloo import spawn


def assert_same_state(a, b):
    for name in ("G", "D", "G_ema"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key} differs"
    for name in ("opt_g", "opt_d"):
        sa, sb = getattr(a, name).state_dict()["state"], getattr(b, name).state_dict()["state"]
        for idx in sa:
            for key in sa[idx]:
                assert torch.equal(sa[idx][key], sb[idx][key]), f"{name}[{idx}].{key} differs"
    assert (a.step, a.critic_steps, a.images_seen) == (b.step, b.critic_steps, b.images_seen)


@pytest.fixture
def step_counter(monkeypatch):
    """Counts the generator steps the loop executes (the real train_step, wrapped where the loop's step calls it)."""
    import distgan.engine.graph_step

    calls = []
    real_step = distgan.engine.graph_step.train_step

    def counted(*args, **kwargs):
        calls.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(distgan.engine.graph_step, "train_step", counted)
    return calls


# num_workers=2 also checks that loader workers pick up their own stream positions in the right order: n_critic=3
# makes the checkpoint fall after an odd number of batches (9), where the loader's round robin is mid-turn
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bitwise_exact(tiny_config, tmp_path, workers, step_counter):
    k = 3
    common = [f"data.num_workers={workers}", "model.critic_dropout=0.3", "log.checkpoint_every=2", "train.n_critic=3"]
    straight = train_local(tiny_config(*common, f"train.steps={2 * k}"), tmp_path / "straight")

    first = train_local(tiny_config(*common, f"train.steps={k}"), tmp_path / "resumed")
    assert first.step == k
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [
        "ckpt-00000002.pt", "ckpt-00000003.pt"]
    step_counter.clear()
    resumed = train_local(tiny_config(*common, f"train.steps={2 * k}"), tmp_path / "resumed")
    assert len(step_counter) == k, f"the resumed run executed {len(step_counter)} steps, not the remaining {k}"
    assert_same_state(straight, resumed)


def test_a_restart_with_other_cores_keeps_the_checkpoints_loader_workers(tiny_config, tmp_path, monkeypatch,
                                                                         caplog):
    """The stream positions are per loader worker. data.num_workers=-1 derives the count from the cores, so a
    restart on another node type would split the shards otherwise: auto keeps the checkpoint's count and resumes
    exactly; an explicitly different count re-seeds the stream, with a warning."""
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # 2 cores: auto means 0 loader processes
    k, common = 3, ["model.critic_dropout=0.3", "log.checkpoint_every=2", "train.n_critic=3"]  # 9 batches: odd
    straight = train_local(tiny_config("data.num_workers=2", *common, f"train.steps={2 * k}"), tmp_path / "straight")
    for name in ("auto", "explicit"):
        train_local(tiny_config("data.num_workers=2", *common, f"train.steps={k}"), tmp_path / name)
    caplog.clear()
    resumed = train_local(tiny_config("data.num_workers=-1", *common, f"train.steps={2 * k}"), tmp_path / "auto")
    assert_same_state(straight, resumed)
    assert "loader workers" not in caplog.text
    other = train_local(tiny_config("data.num_workers=0", *common, f"train.steps={2 * k}"), tmp_path / "explicit")
    assert "data.num_workers=0, but the checkpoint's data stream was read by 2 loader workers" in caplog.text
    weights = zip(other.G.state_dict().values(), straight.G.state_dict().values())
    assert not all(torch.equal(a, b) for a, b in weights), "re-seeded data, yet the same training"


def test_resumed_run_differs_from_a_fresh_start(tiny_config, tmp_path):
    """Guards the comparison above: a different history gives different weights."""
    straight = train_local(tiny_config("train.steps=4"), tmp_path / "a")
    fresh = train_local(tiny_config("train.steps=2"), tmp_path / "c")
    with pytest.raises(AssertionError):
        assert_same_state(straight, fresh)


class RankLauncher:
    """The launcher contract for one gloo rank: checkpoints in a folder every rank sees, written by rank 0."""

    def __init__(self, run_dir: str):
        self.dist, self.device, self.run_dir, self.cpus = Dist.from_process_group(), torch.device("cpu"), Path(run_dir), 1.0
        self.checkpoints = FolderCheckpoints(self.run_dir / "checkpoints", 5, self.dist)

    def should_stop(self):
        return False

    def preempted(self):
        return False

    def publish(self):
        pass

    def report(self, step, metrics):
        pass


def train_ranks(rank: int, world: int, root: str, name: str, plan: list[int]) -> None:
    """Trains to each step count of plan in turn (a resume in between), then saves this rank's weights and RNG."""
    for steps in plan:
        cfg = load_config(None, [
            "model.z_dim=8", "model.width=4", "model.image_size=16", "model.critic_dropout=0.3", "data.source=demo",
            f"data.cache_dir={root}/cache", "data.demo_images=256", "data.shuffle_buffer=16", "data.num_workers=0",
            "train.batch_size=7", "train.n_critic=2", "train.device=cpu", f"train.steps={steps}", "log.every=1",
            "log.sample_every=100", "log.checkpoint_every=100", "log.num_samples=4", "log.progress=false",
            "run.mode=local", f"run.root={root}"])
        state = train(cfg, RankLauncher(f"{root}/{name}"))
    out = {f"{n}.{k}": v for n in ("G", "D", "G_ema") for k, v in getattr(state, n).state_dict().items()}
    torch.save({**out, "torch_rng": torch.get_rng_state()}, f"{root}/{name}-rank{rank}.pt")


def test_each_rank_resumes_its_own_data_position_and_dropout_rng(tmp_path):
    """2 ranks (4 + 3 of a batch of 7, critic dropout on): 3 steps, a checkpoint, a resume to 6 = 6 steps straight.
    Each rank must take its own entry of the checkpoint's per-rank states; rank 0's stream and dropout RNG on
    rank 1 would give other batches and masks there."""
    spawn(train_ranks, 2, str(tmp_path), "straight", [6])
    spawn(train_ranks, 2, str(tmp_path), "resumed", [3, 6])
    for rank in range(2):
        straight, resumed = (torch.load(tmp_path / f"{name}-rank{rank}.pt") for name in ("straight", "resumed"))
        differ = [key for key in straight if not torch.equal(straight[key], resumed[key])]
        assert differ == [], f"rank {rank}: {len(differ)} of {len(straight)} differ, e.g. {differ[:4]}"


def test_the_best_evaluation_so_far_survives_a_resume(tiny_config, tmp_path):
    """Lost on a resume, the first evaluation after it would count as a new best and overwrite best.pt and
    generator-best.pt, however bad it is."""
    from distgan.engine.checkpoint import restore
    from distgan.engine.state import TrainState

    cfg = tiny_config("train.steps=2", "eval.every=2", "eval.metrics=[swd]", "eval.num_samples=32")
    first = train_local(cfg, tmp_path / "run")
    assert first.best and first.best["metric"] == "eval/swd"
    payload = FolderCheckpoints(tmp_path / "run" / "checkpoints", 5).load_latest()
    resumed = TrainState.create(cfg, torch.device("cpu"), Dist())
    restore(resumed, payload, Dist())
    assert resumed.best == first.best


def test_only_a_better_evaluation_replaces_the_best_checkpoint(tiny_config, tmp_path):
    """Scripted scores (lower is better) at steps 1-4: step 1's is the best, and the worse ones after it, before
    and after a resume, leave best.pt, generator-best.pt and the logged best at step 1."""
    from distgan.engine.checkpoint import read_file
    from distgan.engine.loop import train
    from distgan.evaluation.metrics import headline as rank_results
    from distgan.launch.local import LocalLauncher

    scores = [0.3, 0.4, 0.35, 0.6]

    class ScriptedEvaluator:  # what the launcher hands the loop (engine/launcher.py, Evaluate)
        def __call__(self, generator):
            return {"eval/swd": scores.pop(0), "eval/seconds": 0.0}

        headline = staticmethod(rank_results)

    common = ["eval.every=1", "eval.at_start=false", "log.checkpoint_every=2"]
    for steps in (2, 4):
        with LocalLauncher(tiny_config(*common, f"train.steps={steps}"), tmp_path / "run") as launcher:
            resumed = train(tiny_config(*common, f"train.steps={steps}"), launcher, ScriptedEvaluator())
    assert not scores, "four evaluations"
    assert resumed.best == {"metric": "eval/swd", "value": 0.3, "step": 1}
    assert read_file(tmp_path / "run" / "checkpoints" / "best.pt")["step"] == 1
    best_export = read_file(tmp_path / "run" / "generators" / "generator-best.pt")
    assert (best_export["step"], best_export["metrics"]["eval/swd"]) == (1, 0.3)
    assert read_file(tmp_path / "run" / "generators" / "generator-00000004.pt")["metrics"]["best/step"] == 1.0


def test_a_resume_trains_with_the_configs_learning_rates_and_betas(tiny_config, tmp_path):
    """The optimizers' state comes from the checkpoint, their hyperparameters from the config: a rerun with other
    values (or a PBT exploit with mutated ones) trains with those, for both networks."""
    train_local(tiny_config("train.steps=2"), tmp_path / "run")
    changed = ["train.lr_g=1e-3", "train.lr_d=5e-4", "train.beta1=0.1", "train.beta2=0.8"]
    state = train_local(tiny_config("train.steps=3", *changed), tmp_path / "run")
    assert state.step == 3
    for opt, lr in ((state.opt_g, 1e-3), (state.opt_d, 5e-4)):
        group = opt.param_groups[0]
        assert (group["lr"], group["betas"]) == (lr, (0.1, 0.8))
        assert all(s["step"].item() > 2 for s in opt.state.values()), "the moments came from the checkpoint"
