"""A non-finite loss ends the run with one line naming the step and the value, and is never checkpointed;
train.on_nonfinite=rollback reloads the last good checkpoint and finishes the run instead."""

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_module
from distgan.data.stream import RealBatches
from distgan.engine.checkpoint import read_file
from distgan.engine.noise import SlicedNoise
from distgan.errors import Diverged
from distgan.launch.local import train_local


@pytest.fixture
def nan_batch_once(monkeypatch):
    """The real batch number `at` (counting from 1) is all NaN, once; later calls are the real data again."""
    calls = {"n": 0, "at": None}
    real_call = RealBatches.__call__

    def call(self):
        calls["n"] += 1
        batch = real_call(self)
        return torch.full_like(batch, math.nan) if calls["n"] == calls["at"] else batch

    monkeypatch.setattr(RealBatches, "__call__", call)
    return calls


def all_finite(payload) -> bool:
    tensors = []

    def collect(obj):
        if isinstance(obj, torch.Tensor):
            tensors.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                collect(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                collect(v)

    collect(payload["state"])
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def test_nan_stops_the_run_and_no_checkpoint_holds_it(tiny_config, tmp_path, nan_batch_once):
    # n_critic 2: step 5's first critic update takes real batch 9
    cfg = tiny_config("train.steps=10", "log.every=4", "log.checkpoint_every=2", "log.keep_checkpoints=10")
    nan_batch_once["at"] = 9
    with pytest.raises(Diverged) as info:
        train_local(cfg, tmp_path / "run")
    message = str(info.value)
    assert "\n" not in message
    assert "non-finite loss/critic = nan at step 5" in message, message
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("ckpt-*.pt"))
    assert [p.name for p in checkpoints] == ["ckpt-00000002.pt", "ckpt-00000004.pt"]  # not 6, the first check
    assert all(all_finite(read_file(p)) for p in checkpoints)
    exports = sorted(p.name for p in (tmp_path / "run" / "generators").glob("generator-*.pt"))
    assert exports == ["generator-00000002.pt", "generator-00000004.pt"]


def test_rollback_reloads_the_last_good_checkpoint_and_finishes(tiny_config, tmp_path, nan_batch_once, monkeypatch):
    # event files are named <second>.<host>.<pid>.<a counter of writers in the process>: let the rollback's writer
    # be the one numbered 10 after 9, which sorts first when both are opened within one second (as in a CI run)
    from tensorboard.summary.writer import event_file_writer

    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))
    latents = []  # every draw, in order: 3 per step (n_critic 2, then the generator's)
    real_latents = SlicedNoise.latents
    monkeypatch.setattr(SlicedNoise, "latents", lambda self, *a: latents.append(real_latents(self, *a)) or latents[-1])
    cfg = tiny_config("train.steps=10", "log.every=1", "log.checkpoint_every=2", "log.keep_checkpoints=10",
                      "train.on_nonfinite=rollback", "train.max_rollbacks=1")
    nan_batch_once["at"] = 9
    state = train_local(cfg, tmp_path / "run")
    assert state.step == 10 and state.rollbacks == 1
    assert len(latents) == 3 * 11, "steps 1-10, and step 5 twice"
    # step 5 again, from step 4's checkpoint, with other latents: a replay of the failed stretch could fail again
    assert not torch.equal(latents[12], latents[15])
    assert all(torch.isfinite(p).all() for p in state.G.parameters())
    newest = read_file(tmp_path / "run" / "checkpoints" / "ckpt-00000010.pt")
    assert all_finite(newest) and newest["state"]["rollbacks"] == 1
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    events = acc.Scalars("loss/critic")
    assert [e.step for e in events] == list(range(1, 11)), "the rolled-back step 5 is logged once, finite"
    # and deterministically, not only when both files fall in one second: no second event file to sort wrongly
    assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert all(math.isfinite(e.value) for e in events)


def test_rollbacks_are_limited(tiny_config, tmp_path, nan_batch_once):
    cfg = tiny_config("train.steps=10", "log.every=1", "log.checkpoint_every=2", "train.on_nonfinite=rollback",
                      "train.max_rollbacks=0")
    nan_batch_once["at"] = 9
    with pytest.raises(Diverged, match=r"nan at step 5 after 0 rollbacks"):
        train_local(cfg, tmp_path / "run")


def test_command_line_prints_one_line(tiny_config, tmp_path):
    """A learning rate no run survives: the critic's weights overflow within a few steps."""
    cfg = tiny_config()
    result = run_module("distgan.train", "run.mode=local", f"run.root={tmp_path}", "run.name=d",
                        f"data.cache_dir={cfg.data.cache_dir}", "data.demo_images=512", "model.width=8",
                        "model.z_dim=16", "model.image_size=16", "train.batch_size=16", "train.lr_d=1e38",
                        "train.steps=20", "train.device=cpu", "log.every=5", "log.progress=false")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged: non-finite ") and " at step " in last, last
