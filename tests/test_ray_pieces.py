"""Ray mode's pieces that need no cluster: which worker errors end a run instead of a retry, and which checkpoints
a restarted worker group tries (tests/test_ray.py runs the whole thing on a real cluster)."""

import os
from types import SimpleNamespace

import pytest
import ray.train

from distgan.errors import (ConfigError, DataSourceError, Diverged, StorageError, StorageUnreachable, UnreadableFile,
                            UnsafeFile, UnusableData, UserError)
from distgan.launch.ray_train import repeats_on_retry


@pytest.mark.parametrize("error, ends_the_run", [
    (Diverged("training diverged: non-finite loss/critic = nan at step 5"), True),  # the same state: the same NaN
    (ConfigError("model.width: must be >= 1"), True),
    (UserError("the checkpoint was trained with another model"), True),
    (StorageError("run.root: cannot write to s3://bucket/run"), False),  # a bucket's hiccup passes
    (UnreadableFile("checkpoint.pt is cut short"), False),
    (DataSourceError("cannot read s3://bucket/shards/shard-000003.tar"), False),  # a node without the mount
    (UnusableData("rank 0 loader worker 0: no readable image in 3 passes"), True),  # the same shards again
    (StorageUnreachable("storage did not answer for 300 s"), True),  # the worker waited already
    (UnsafeFile("checkpoint.pt holds posix.system"), True),
    (RuntimeError("NCCL error: unhandled system error"), False),  # a lost peer: what retries are for
    (SimpleNamespace(cause=Diverged("nan")), True),  # Ray wraps a worker's exception: the cause counts
    (SimpleNamespace(cause=OSError("connection reset")), False),
])
def test_only_errors_a_retry_would_repeat_end_the_run(error, ends_the_run):
    cause = repeats_on_retry(error)
    assert (cause is not None) == ends_the_run
    if ends_the_run:
        assert cause is getattr(error, "cause", error)


def test_a_restarted_group_tries_every_checkpoint_folder_newest_first(tmp_path, monkeypatch):
    """Ray registers a reported checkpoint up to 2 s after ray.train.report wrote it: a folder it has not registered
    counts too (a node lost in between would cost a checkpoint interval), and so does the one it hands the group.
    After a rollback nothing past the checkpoint the attempt saved last is taken."""
    from distgan.engine.checkpoint import CHECKPOINT_FILE
    from distgan.engine.distributed import Dist
    from distgan.io.run_folder import RunFolder
    from distgan.launch.ray_worker import RayCheckpoints, checkpoint_dir

    for step in (2, 4):
        (tmp_path / checkpoint_dir(step)).mkdir()
        (tmp_path / checkpoint_dir(step) / CHECKPOINT_FILE).write_bytes(b"x")
    (tmp_path / checkpoint_dir(8)).mkdir()  # a folder whose copy never finished: no checkpoint.pt
    (tmp_path / "checkpoint_tmp").mkdir()
    store = RayCheckpoints(Dist(), RunFolder(str(tmp_path)))
    registered = None
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: registered)
    assert store.candidates() == [4, 2]
    registered = ray.train.Checkpoint(str(tmp_path / checkpoint_dir(6)))  # handed over, listed or not
    assert store.candidates() == [6, 4, 2]
    store.last_saved = 2
    assert store.candidates() == [2]


def test_a_run_folder_on_object_storage_mirrors_its_staging_folder(tmp_path):
    """Ray mode stages TensorBoard, samples and exports locally and copies them up (RunFolder.sync): new and
    changed files go up, files being written (.NAME.tmp) do not, and exports pruned locally are deleted remotely.
    fsspec's in-memory filesystem stands in for a bucket."""
    import fsspec

    from distgan.io.run_folder import RunFolder

    folder = RunFolder("memory://bucket/run-mirror")
    fs = fsspec.filesystem("memory")
    local = folder.local
    (local / "generators").mkdir()
    for step in (1, 2, 3):
        (local / "generators" / f"generator-{step:08d}.pt").write_bytes(b"export %d" % step)
    (local / "events.out").write_bytes(b"first records")
    (local / "generators" / ".generator-00000004.pt.123.tmp").write_bytes(b"half")
    folder.sync()

    def remote() -> dict[str, bytes]:
        return {p.removeprefix("/bucket/run-mirror/"): fs.cat(p) for p in fs.find("/bucket/run-mirror")}

    assert remote() == {"events.out": b"first records", **{f"generators/generator-{s:08d}.pt": b"export %d" % s
                                                              for s in (1, 2, 3)}}
    (local / "generators" / "generator-00000001.pt").unlink()  # pruned: log.keep_checkpoints
    (local / "generators" / ".generator-00000004.pt.123.tmp").rename(local / "generators" / "generator-00000004.pt")
    (local / "events.out").write_bytes(b"first records, and more")
    folder.close()
    assert remote() == {"events.out": b"first records, and more", **{
        f"generators/generator-{s:08d}.pt": b"export %d" % s if s < 4 else b"half" for s in (2, 3, 4)}}
    assert not local.exists(), "the staging folder goes with close()"


def test_checkpoint_folders_ray_never_registered_are_pruned_like_the_others(tiny_config, tmp_path, monkeypatch):
    """A folder written by an attempt lost before Ray's controller recorded it is never deleted by Ray: at the next
    start the newest log.keep_checkpoints stay, registered or not, and older unregistered ones go."""
    import io
    import json

    import torch

    from distgan.engine.checkpoint import CHECKPOINT_FILE, build_payload
    from distgan.engine.distributed import Dist
    from distgan.io.run_folder import RunFolder
    from distgan.engine.state import TrainState
    from distgan.launch.ray_worker import SNAPSHOT, RayCheckpoints, checkpoint_dir

    cfg = tiny_config()
    state = TrainState.create(cfg, torch.device("cpu"), Dist())
    for step in (2, 4, 6, 8, 10):
        state.step = step
        (tmp_path / checkpoint_dir(step)).mkdir()
        buffer = io.BytesIO()
        torch.save(build_payload(state, cfg, [state.rank_state()]), buffer)
        (tmp_path / checkpoint_dir(step) / CHECKPOINT_FILE).write_bytes(buffer.getvalue())
    registered = [{"checkpoint_dir_name": checkpoint_dir(step)} for step in (2, 8, 10)]  # Ray deletes 2 itself
    (tmp_path / SNAPSHOT).write_text(json.dumps({"checkpoint_results": registered}))
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    assert RayCheckpoints(Dist(), RunFolder(str(tmp_path)), keep=3).load_latest()["step"] == 10
    assert sorted(p.name for p in tmp_path.glob("checkpoint_0*")) == [checkpoint_dir(s) for s in (2, 6, 8, 10)]


def test_generator_exports_of_earlier_attempts_are_pruned_in_the_bucket():
    """An attempt's staging folder holds only its own exports: the bucket keeps the newest log.keep_checkpoints of
    all attempts (and generator-best.pt), not every export an earlier attempt left."""
    import fsspec

    from distgan.io.run_folder import RunFolder

    fs = fsspec.filesystem("memory")
    for step in (5, 10, 15):  # an earlier attempt's
        fs.pipe(f"/bucket/run-prune/generators/generator-{step:08d}.pt", b"old %d" % step)
    fs.pipe("/bucket/run-prune/generators/generator-best.pt", b"best")
    folder = RunFolder("memory://bucket/run-prune")
    folder.keep_newest("generators/generator-[0-9]*.pt", 3)
    (folder.local / "generators").mkdir()
    for step in (20, 25):
        (folder.local / "generators" / f"generator-{step:08d}.pt").write_bytes(b"new %d" % step)
    folder.close()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find("/bucket/run-prune/generators")) == [
        "generator-00000015.pt", "generator-00000020.pt", "generator-00000025.pt", "generator-best.pt"]


def test_staging_folders_of_dead_processes_are_removed_at_the_next_start(tmp_path, monkeypatch):
    """A killed worker leaves its staging folder in the temporary directory: the next run folder on object storage
    removes those whose process is gone, and keeps a live process's and one whose final copy failed (.kept)."""
    import subprocess
    import sys
    import tempfile

    from distgan.io.run_folder import KEPT_MARKER, STAGING_PREFIX, RunFolder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"{STAGING_PREFIX}{dead.stdout.strip()}-abc"
    kept = tmp_path / f"{STAGING_PREFIX}{dead.stdout.strip()}-kept"
    live = tmp_path / f"{STAGING_PREFIX}{os.getpid()}-live"
    for folder in (gone, kept, live):
        (folder / "tensorboard").mkdir(parents=True)
    (kept / KEPT_MARKER).write_text("s3://bucket/run\n")
    staging = RunFolder("memory://bucket/run-staging").local
    assert not gone.exists() and kept.exists() and live.exists() and staging.parent == tmp_path
