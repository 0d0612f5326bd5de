"""The loop's two launcher hooks, in one process: a stop request ends the run with a checkpoint; a preemption
notice writes one checkpoint at once and trains on (Ray restarts the run from it when the node is gone; returning
early would make Ray call the run finished). The launchers here are LocalLauncher with one hook replaced."""

import re

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


def test_ctrl_c_to_the_terminal_checkpoints_once_and_exits_130(tmp_path, demo_cache):
    """Ctrl-C in a terminal reaches the whole process group, loader workers included: the trainer alone handles it
    (one warning, not one per worker), finishes the log interval with a checkpoint, and exits 130, not 0: the run
    is not done (`train && evaluate` must not go on)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    log = tmp_path / "log.txt"
    args = [sys.executable, "-m", "distgan.train", "run.mode=local", f"run.root={tmp_path}", "run.name=c",
            f"data.cache_dir={demo_cache}", "data.demo_images=512", "data.num_workers=2", "model.image_size=16",
            "model.width=8", "model.z_dim=16", "train.batch_size=16", "train.steps=1000", "log.every=2",
            "log.checkpoint_every=1000", "log.progress=false", "eval.every=0"]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while "step 4/1000" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert "step 4/1000" in log.read_text(), log.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGINT)  # its own new session: the trainer and its loader workers, no one else
        proc.wait(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left (the group's id is the trainer's PID)
        except ProcessLookupError:
            pass
    text = log.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert text.count("SIGINT: stopping at the next log step") == 1, text[-3000:]
    step = int(re.findall(r"stopped at step (\d+) with a checkpoint", text)[-1])
    assert f"stopped at step {step} of 1000 (SIGINT)" in text
    assert sorted(p.name for p in (tmp_path / "c" / "checkpoints").iterdir()) == [f"ckpt-{step:08d}.pt"]
