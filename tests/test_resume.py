"""Resume is exact: k steps, stop, resume to 2k equals 2k steps in one go, bitwise on CPU."""

import pytest
import torch

from distgan.engine.checkpoint import list_checkpoints
from distgan.engine.loop import train


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


# num_workers=2 also checks that loader workers pick up their own stream positions in the right order
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bitwise_exact(tiny_config, tmp_path, workers):
    k = 3
    common = [f"data.num_workers={workers}", "model.critic_dropout=0.3", "log.checkpoint_every=2"]
    straight = train(tiny_config(*common, f"train.steps={2 * k}"), tmp_path / "straight")

    cfg = tiny_config(*common, f"train.steps={k}")
    first = train(cfg, tmp_path / "resumed")
    assert first.step == k
    assert [p.name for p in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == [
        "ckpt-00000002.pt", "ckpt-00000003.pt"]
    resumed = train(tiny_config(*common, f"train.steps={2 * k}"), tmp_path / "resumed")
    assert_same_state(straight, resumed)


def test_resumed_run_differs_from_a_fresh_start(tiny_config, tmp_path):
    """Guards the test above: if resume silently restarted, the weights would not match the straight run."""
    straight = train(tiny_config("train.steps=4"), tmp_path / "a")
    train(tiny_config("train.steps=2"), tmp_path / "b")
    fresh = train(tiny_config("train.steps=2"), tmp_path / "c")  # a second, independent 2-step run
    with pytest.raises(AssertionError):
        assert_same_state(straight, fresh)
