"""Resume is exact: k steps, stop, resume to 2k equals 2k steps in one go, bitwise on CPU; and the resumed run
really resumes (it executes only the remaining k steps)."""

import pytest
import torch

import distgan.engine.loop
from distgan.launch.local import train_local


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
    """Counts the generator steps the loop executes (the real train_step, wrapped)."""
    calls = []
    real_step = distgan.engine.loop.train_step

    def counted(*args, **kwargs):
        calls.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(distgan.engine.loop, "train_step", counted)
    return calls


# num_workers=2 also checks that loader workers pick up their own stream positions in the right order
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bitwise_exact(tiny_config, tmp_path, workers, step_counter):
    k = 3
    common = [f"data.num_workers={workers}", "model.critic_dropout=0.3", "log.checkpoint_every=2"]
    straight = train_local(tiny_config(*common, f"train.steps={2 * k}"), tmp_path / "straight")

    first = train_local(tiny_config(*common, f"train.steps={k}"), tmp_path / "resumed")
    assert first.step == k
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [
        "ckpt-00000002.pt", "ckpt-00000003.pt"]
    step_counter.clear()
    resumed = train_local(tiny_config(*common, f"train.steps={2 * k}"), tmp_path / "resumed")
    assert len(step_counter) == k, f"the resumed run executed {len(step_counter)} steps, not the remaining {k}"
    assert_same_state(straight, resumed)


def test_resumed_run_differs_from_a_fresh_start(tiny_config, tmp_path):
    """Guards the comparison above: a different history gives different weights."""
    straight = train_local(tiny_config("train.steps=4"), tmp_path / "a")
    fresh = train_local(tiny_config("train.steps=2"), tmp_path / "c")
    with pytest.raises(AssertionError):
        assert_same_state(straight, fresh)
