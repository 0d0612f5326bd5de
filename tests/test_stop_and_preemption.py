"""The loop's two launcher hooks, in one process: a stop request ends the run with a checkpoint; a preemption
notice writes one checkpoint at once and trains on (Ray restarts the run from it when the node is gone; returning
early would make Ray call the run finished). The launchers here are LocalLauncher with one hook replaced."""

from distgan.engine.loop import train
from distgan.launch.local import LocalLauncher


def checkpoint_steps(launcher):
    return launcher.checkpoints.steps()


class StopOnThirdLogStep(LocalLauncher):
    calls = 0

    def should_stop(self):
        self.calls += 1
        return self.calls >= 3


class PreemptedFromThirdLogStep(LocalLauncher):
    calls = 0

    def preempted(self):
        self.calls += 1
        return self.calls >= 3  # the notice stays up from the third log step on


def test_stop_request_checkpoints_and_returns(tiny_config, tmp_path):
    cfg = tiny_config("train.steps=8", "log.checkpoint_every=100", "log.keep_checkpoints=10")
    launcher = StopOnThirdLogStep(cfg, tmp_path / "run")
    state = train(cfg, launcher)
    assert state.step == 3
    assert checkpoint_steps(launcher) == [3]


def test_preemption_notice_checkpoints_once_and_trains_on(tiny_config, tmp_path):
    cfg = tiny_config("train.steps=8", "log.checkpoint_every=4", "log.keep_checkpoints=10")
    launcher = PreemptedFromThirdLogStep(cfg, tmp_path / "run")
    state = train(cfg, launcher)
    assert state.step == 8
    assert launcher.calls == 8, "asked at every log step (in Ray a barrier: every rank must call it alike)"
    assert checkpoint_steps(launcher) == [3, 4, 8]
