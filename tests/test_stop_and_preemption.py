"""The loop's two launcher hooks, in one process: a stop request ends the run with a checkpoint; a preemption
notice writes one checkpoint at once and trains on (Ray restarts the run from it when the node is gone; returning
early would make Ray call the run finished)."""

from distgan.engine.checkpoint import list_checkpoints
from distgan.engine.loop import train


def checkpoint_steps(run_dir):
    return [int(p.stem.split("-")[1]) for p in list_checkpoints(run_dir / "checkpoints")]


def test_stop_request_checkpoints_and_returns(tiny_config, tmp_path):
    cfg = tiny_config("train.steps=8", "log.checkpoint_every=100", "log.keep_checkpoints=10")
    calls = []

    def stop_check():
        calls.append(1)
        return len(calls) >= 3  # from the third log step on

    state = train(cfg, tmp_path / "run", stop_check=stop_check)
    assert state.step == 3
    assert checkpoint_steps(tmp_path / "run") == [3]


def test_preemption_notice_checkpoints_once_and_trains_on(tiny_config, tmp_path):
    cfg = tiny_config("train.steps=8", "log.checkpoint_every=4", "log.keep_checkpoints=10")
    calls = []

    def preempt_check():
        calls.append(1)
        return len(calls) >= 3  # the notice stays up from the third log step on

    state = train(cfg, tmp_path / "run", preempt_check=preempt_check)
    assert state.step == 8
    assert len(calls) == 8, "asked at every log step (in Ray a barrier: every rank must call it alike)"
    assert checkpoint_steps(tmp_path / "run") == [3, 4, 8]
