"""Ray mode's pieces that need no cluster: which worker errors end a run instead of a retry, and which checkpoints
a restarted worker group tries (tests/test_ray.py runs the whole thing on a real cluster)."""

from types import SimpleNamespace

import pytest
import ray.train

from distgan.errors import ConfigError, DataSourceError, Diverged, StorageError, UnreadableFile, UserError
from distgan.launch.ray_train import repeats_on_retry


@pytest.mark.parametrize("error, ends_the_run", [
    (Diverged("training diverged: non-finite loss/critic = nan at step 5"), True),  # the same state: the same NaN
    (ConfigError("model.width: must be >= 1"), True),
    (UserError("the checkpoint was trained with another model"), True),
    (StorageError("run.root: cannot write to s3://bucket/run"), False),  # a bucket's hiccup passes
    (UnreadableFile("checkpoint.pt is cut short"), False),
    (DataSourceError("cannot read s3://bucket/shards/shard-000003.tar"), False),  # a node without the mount
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
    from distgan.engine.run_folder import RunFolder
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

    from distgan.engine.run_folder import RunFolder

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
