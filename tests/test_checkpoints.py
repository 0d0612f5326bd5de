"""Crash-safe checkpoints: a writer killed mid-write never leaves a checkpoint that cannot be resumed from, an
unreadable newest checkpoint falls back to the previous one, and replicas that differ are never saved."""

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from conftest import run_module
from distgan.engine.checkpoint import CHECKPOINT_FILE, FolderCheckpoints, build_payload, check_payload, write_atomic
from distgan.engine.distributed import Dist, ReplicaMismatch
from distgan.io.run_folder import RunFolder, write_durably
from distgan.engine.state import TrainState
from distgan.errors import StorageError
from gloo import spawn


@pytest.mark.parametrize("write", ["checkpoint", "run folder file"])
def test_files_reach_the_disk_before_their_name(tmp_path, monkeypatch, tiny_config, write):
    """A power loss cannot be staged here, so this checks the order of calls that survives one: the data is fsynced
    under a temporary name, renamed over the final name, then the folder is fsynced, and the parent of each folder
    created for this file. For local checkpoints, and for the run folder's own files (Ray mode's
    best/checkpoint.pt, ASHA's rung records)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    if write == "checkpoint":
        FolderCheckpoints(str(tmp_path / "checkpoints"), keep=2).save(3, payload_for(tiny_config(), 3), {})
        folder, name = tmp_path / "checkpoints", "ckpt-00000003.pt"
    else:
        RunFolder(str(tmp_path / "run")).write_bytes("best/checkpoint.pt", b"x" * 1000)
        folder, name = tmp_path / "run" / "best", "checkpoint.pt"
        assert (folder / name).read_bytes() == b"x" * 1000
    created = [folder] if write == "checkpoint" else [folder, folder.parent]  # RunFolder makes run/ lazily
    assert [kind for kind, _ in events] == ["fsync", "rename", "fsync"] + ["fsync"] * len(created), events
    assert events[0][1].startswith(f".{name}.") and events[1][1] == name and events[2][1] == folder.name
    assert [name for _, name in events[3:]] == [f.parent.name for f in created]
    assert sorted(p.name for p in folder.iterdir()) == [name]


def test_a_durable_write_leaves_no_debris(tmp_path):
    """A killed writer's temporary of the same file is removed by the next write of it (another file's is left to
    its own writer), and a write that fails leaves the old file as it was and no temporary."""
    folder = tmp_path / "best"
    folder.mkdir()
    (folder / ".checkpoint.pt.99999.tmp").write_bytes(b"a killed writer's")
    (folder / ".records.json.99999.tmp").write_bytes(b"another file's")
    RunFolder(str(tmp_path)).write_bytes("best/checkpoint.pt", b"old")
    assert sorted(p.name for p in folder.iterdir()) == [".records.json.99999.tmp", "checkpoint.pt"]

    def disk_full(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_durably(folder / "checkpoint.pt", disk_full)
    assert (folder / "checkpoint.pt").read_bytes() == b"old"
    assert sorted(p.name for p in folder.iterdir()) == [".records.json.99999.tmp", "checkpoint.pt"]


def payload_for(cfg, step: int) -> dict:
    state = TrainState.create(cfg, torch.device("cpu"), Dist())
    state.step = step
    return build_payload(state, cfg, [state.rank_state()])


def write_forever(directory: str, payload: dict) -> None:
    """Child process: save checkpoint after checkpoint (steps 1, 2, ...) until killed."""
    store = FolderCheckpoints(directory, keep=2)
    step = max(store.steps(), default=0)
    while True:
        step += 1
        payload["step"] = step
        store.save(step, payload, {})


def test_kill_9_during_writes_never_loses_the_checkpoint(tiny_config, tmp_path):
    """20 times: a writer is SIGKILLed while a temporary file exists (it is mid-write: in torch.save, fsync or
    the rename), at a random moment after that. Each time the store then holds a readable newest checkpoint,
    from the step before the interrupted one at the latest, and the half-written file is cleaned away."""
    cfg = tiny_config("model.width=32", "model.image_size=32")  # ~4 MB per checkpoint
    payload = payload_for(cfg, 0)
    directory = tmp_path / "checkpoints"
    FolderCheckpoints(directory, keep=2).save(0, payload, {})  # from here on there is always one to lose
    fork = multiprocessing.get_context("fork")
    rng = random.Random(0)
    caught_mid_write, newest_before = 0, 0
    for attempt in range(20):
        writer = fork.Process(target=write_forever, args=(str(directory), payload), daemon=True)
        writer.start()
        deadline = time.time() + 5
        while not list(directory.glob(".*.tmp")) and time.time() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.02))
        # the step being written when the kill comes is this one or a later one (the writer only goes forward)
        writing = [int(p.name.split(".")[1].split("-")[1]) for p in directory.glob(".ckpt-*.tmp")]
        caught_mid_write += bool(writing)
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        store = FolderCheckpoints(directory, keep=2)  # what a rerun sees: stale temporaries removed
        assert not list(directory.glob(".*.tmp"))
        latest = store.load_latest()
        assert latest is not None, f"attempt {attempt}: the kill lost every checkpoint"
        check_payload(latest)
        assert latest["step"] == max(store.steps()), f"attempt {attempt}: the newest file is not the one loaded"
        floor = max([newest_before] + [step - 1 for step in writing])
        assert latest["step"] >= floor, f"attempt {attempt}: step {latest['step']} loaded, {floor} was complete"
        newest_before = latest["step"]
        assert torch.equal(latest["state"]["G"]["net.0.weight"], payload["state"]["G"]["net.0.weight"])
    assert caught_mid_write >= 10, "the kills should mostly land inside a write"


def test_killed_training_run_resumes_when_rerun(tiny_config, tmp_path):
    """The real command line, killed while it writes a checkpoint, then rerun: it resumes and finishes."""
    root = tmp_path / "runs"
    args = ["run.mode=local", f"run.root={root}", "run.name=k", "model.width=32", "model.image_size=32",
            "model.z_dim=16", f"data.cache_dir={tiny_config().data.cache_dir}", "data.demo_images=512",
            "train.batch_size=16", "train.n_critic=1", "train.device=cpu", "log.every=1", "log.checkpoint_every=1",
            "log.sample_every=1000", "log.progress=false"]
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-m", "distgan.train", *args, "train.steps=100000"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = root / "k" / "checkpoints"
    deadline = time.time() + 120
    while len(list(checkpoints.glob("ckpt-*.pt"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
    while not list(checkpoints.glob(".*.tmp")) and time.time() < deadline:
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    newest = max(FolderCheckpoints(checkpoints, keep=3).steps())
    result = run_module("distgan.train", *args, f"train.steps={newest + 2}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from step {newest}" in result.stdout + result.stderr


def test_truncated_newest_checkpoint_falls_back_to_the_previous(tiny_config, tmp_path, caplog):
    cfg = tiny_config("train.steps=4", "log.checkpoint_every=2")
    store = FolderCheckpoints(tmp_path / "checkpoints", keep=3)
    for step in (2, 4):
        store.save(step, payload_for(cfg, step), {})
    newest = store.path(4)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    assert store.load_latest()["step"] == 2
    assert "ckpt-00000004.pt cannot be read" in caplog.text
    store.path(2).write_bytes(b"garbage")
    with pytest.raises(StorageError, match="none of the 2 checkpoints"):
        store.load_latest()


def test_rerun_after_truncation_resumes_from_the_previous_checkpoint(tiny_config, tmp_path):
    from distgan.launch.local import train_local

    train_local(tiny_config("train.steps=4", "log.checkpoint_every=2"), tmp_path / "run")
    newest = tmp_path / "run" / "checkpoints" / "ckpt-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    state = train_local(tiny_config("train.steps=5", "log.checkpoint_every=2"), tmp_path / "run")
    assert state.step == 5 and state.critic_steps == 5 * 2  # resumed at 2: 3 steps run, all counted


def perturbed_rank_fn(rank: int, world: int, cfg, out_dir: str) -> None:
    import copy

    own = copy.deepcopy(cfg)
    own.train.seed += rank  # rank 1 draws other initial weights: rank 0's broadcast must replace them
    state = TrainState.create(own, torch.device("cpu"), Dist(rank, world))
    dist = Dist(rank, world)
    dist.check_identical({"G": state.G, "D": state.D})  # identical after creation: no error
    if rank == 1:
        with torch.no_grad():
            next(state.D.parameters())[0].view(-1)[0] += 1e-6
    try:
        dist.check_identical({"G": state.G, "D": state.D})
        outcome = "saved"
    except ReplicaMismatch as exc:
        outcome = str(exc)
    with open(f"{out_dir}/rank{rank}.txt", "w") as f:
        f.write(outcome)


def test_replicas_that_differ_are_not_saved(tiny_config, tmp_path):
    spawn(perturbed_rank_fn, 2, tiny_config(), str(tmp_path))
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert all(o.startswith("replicas diverged") for o in outcomes), outcomes
    assert "D.net.0.weight" in outcomes[1]


def test_a_run_resumed_at_its_last_step_reports_its_final_metrics_again(tiny_config, tmp_path):
    """A Tune trial restored after it had finished (its last report lost with the search's driver) has nothing left
    to train, but the scheduler waits for its final metrics: without them Tune ends the whole search. The loop
    reports what was reported with that checkpoint, as TensorBoard recorded it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distgan.engine.loop import train
    from distgan.evaluation.evaluator import evaluator_for
    from distgan.launch.local import LocalLauncher

    class ReportingLauncher(LocalLauncher):
        """Local mode, with what the loop hands a scheduler recorded."""

        def __init__(self, *args):
            super().__init__(*args)
            self.reports: list[tuple[int, dict]] = []

        def report(self, step: int, metrics: dict) -> None:
            self.reports.append((step, dict(metrics)))

    cfg = tiny_config("train.steps=4", "eval.every=2", "eval.metrics=[swd]", "eval.num_samples=64")
    with ReportingLauncher(cfg, tmp_path / "run") as first:
        train(cfg, first, evaluator_for(cfg, first.dist, first.device))
    assert [step for step, _ in first.reports] == []  # each evaluation came with a checkpoint, which carries it
    with ReportingLauncher(cfg, tmp_path / "run") as again:
        state = train(cfg, again, evaluator_for(cfg, again.dist, again.device))
    assert state.step == 4 and [step for step, _ in again.reports] == [4], again.reports
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = {s.step: s.value for s in events.Scalars("eval/swd")}
    assert again.reports[0][1]["eval/swd"] == pytest.approx(logged[4], rel=1e-6)


def lagging_listing_rank(rank: int, world: int, root: str, start_from: str) -> None:
    from distgan.io.run_folder import RunFolder
    from distgan.launch.ray_worker import RayCheckpoints

    store = RayCheckpoints(Dist.from_process_group(), RunFolder(root), start_from)
    store.candidates = (lambda: [2]) if rank == 0 else (lambda: [])  # rank 1's listing of the run lags behind
    Path(root, f"loaded-{rank}").write_text(str(store.load_latest()["step"]))


def test_ray_ranks_resume_from_the_checkpoint_rank_0_lists(tiny_config, tmp_path):
    """In Ray mode rank 0 picks the checkpoint, and every rank loads that one: a rank whose listing of the run lags
    (a shared file system's cache) must not take the Tune trial's start_from instead and leave rank 0 waiting
    alone in the broadcast."""
    from distgan.launch.ray_worker import checkpoint_dir

    cfg = tiny_config()
    run, donor = tmp_path / "run", tmp_path / "donor"
    for folder, step in ((run / checkpoint_dir(2), 2), (donor, 1)):
        write_atomic(folder / CHECKPOINT_FILE, payload_for(cfg, step))
    spawn(lagging_listing_rank, 2, str(run), str(donor), timeout_s=120)
    assert [(run / f"loaded-{rank}").read_text() for rank in range(2)] == ["2", "2"]
