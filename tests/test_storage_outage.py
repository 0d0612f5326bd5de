"""Storage trouble is ridden out: transient errors are retried with backoff for run.storage_timeout_s, a corrupt
checkpoint is told from an unreachable one, and storage that stays away ends the run without an older checkpoint.

A bucket cannot be taken away here: `flaky://` is fsspec's in-memory filesystem with an outage switch, standing in
for one (the boundary the issue allows to mock). tests/test_ray.py takes the test cluster's S3 stand-in away for
real, behind a proxy.
"""

import errno
import logging
import threading
import time

import pytest
import ray.train
import torch
from fsspec.implementations.memory import MemoryFileSystem

from distgan.engine.checkpoint import CHECKPOINT_FILE, FolderCheckpoints, build_payload
from distgan.engine.distributed import Dist
from distgan.io.run_folder import RunFolder
from distgan.engine.state import TrainState
from distgan.errors import StorageError, StorageUnreachable
from distgan.io.retry import is_transient, with_retries
from distgan.launch.ray_worker import RayCheckpoints, checkpoint_dir


class FlakyFileSystem(MemoryFileSystem):
    """In-memory storage that raises ConnectionError (as s3fs and pyarrow do when a bucket is unreachable) while
    `down` is set."""

    protocol = "flaky"
    down = threading.Event()
    calls_while_down = 0

    def _check(self):
        if FlakyFileSystem.down.is_set():
            FlakyFileSystem.calls_while_down += 1
            raise ConnectionError("Could not connect to the endpoint URL")

    def _open(self, *args, **kwargs):
        self._check()
        return super()._open(*args, **kwargs)

    def exists(self, *args, **kwargs):
        self._check()
        return super().exists(*args, **kwargs)

    def ls(self, *args, **kwargs):
        self._check()
        return super().ls(*args, **kwargs)


@pytest.fixture
def flaky(monkeypatch):
    import fsspec

    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    FlakyFileSystem.store.clear()
    FlakyFileSystem.down.clear()
    FlakyFileSystem.calls_while_down = 0
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)  # no Ray Train session here
    yield FlakyFileSystem
    FlakyFileSystem.down.clear()


def outage(seconds: float) -> threading.Thread:
    FlakyFileSystem.down.set()
    thread = threading.Timer(seconds, FlakyFileSystem.down.clear)
    thread.start()
    return thread


# --- the retry policy ---------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_backoff_doubles_to_30_s_and_gives_up_at_the_deadline():
    clock = FakeClock()

    def down():
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(StorageUnreachable, match=r"^reading x: storage did not answer for 100 s \(run.storage_"):
        with_retries(down, "reading x", 100, sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.sleeps == [1, 2, 4, 8, 16, 30, 30, 9]


def test_an_error_that_asking_again_cannot_fix_is_raised_at_once():
    clock = FakeClock()
    for error in (FileNotFoundError("gone"), PermissionError("denied"), OSError(errno.ENOSPC, "disk full"),
                  ValueError("not storage")):
        def fail(error=error):
            raise error

        with pytest.raises(type(error)):
            with_retries(fail, "x", 100, sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.sleeps == []


def test_clients_own_connection_errors_count_as_transient():
    class EndpointConnectionError(Exception):  # botocore's does not derive from OSError
        pass

    class ReadTimeoutError(Exception):
        pass

    assert is_transient(EndpointConnectionError()) and is_transient(ReadTimeoutError())
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert not is_transient(KeyError("x")) and not is_transient(FileNotFoundError())


def test_a_write_waits_out_a_short_outage(flaky):
    folder = RunFolder("flaky://bucket/run", timeout_s=30)
    started = time.monotonic()
    outage(2.5)
    folder.write_bytes("best/checkpoint.pt", b"whole")
    assert time.monotonic() - started >= 2.5 and flaky.calls_while_down >= 2
    assert folder.read_bytes("best/checkpoint.pt") == b"whole"


# --- resuming: corrupt or unreachable -----------------------------------------------------------------------------
def write_ray_checkpoints(cfg, folder_url: str, steps) -> None:
    import io

    state = TrainState.create(cfg, torch.device("cpu"), Dist())
    folder = RunFolder(folder_url)
    for step in steps:
        state.step = step
        buffer = io.BytesIO()
        torch.save(build_payload(state, cfg, [state.rank_state()]), buffer)
        folder.write_bytes(f"{checkpoint_dir(step)}/{CHECKPOINT_FILE}", buffer.getvalue())


def test_ray_mode_falls_back_from_a_truncated_checkpoint_only(tiny_config, flaky, caplog):
    """RayCheckpoints.load_latest: a newest checkpoint cut short falls back to the one before it; when none reads
    back, the run ends in one line."""
    write_ray_checkpoints(tiny_config(), "flaky://bucket/run", (2, 4))
    store = RayCheckpoints(Dist(), RunFolder("flaky://bucket/run", timeout_s=5))
    folder = RunFolder("flaky://bucket/run")
    newest = f"{checkpoint_dir(4)}/{CHECKPOINT_FILE}"
    folder.write_bytes(newest, folder.read_bytes(newest)[:5000])  # an upload cut short
    with caplog.at_level(logging.WARNING):
        assert store.load_latest()["step"] == 2
    assert f"{checkpoint_dir(4)}/{CHECKPOINT_FILE} cannot be read" in caplog.text
    folder.write_bytes(f"{checkpoint_dir(2)}/{CHECKPOINT_FILE}", b"garbage")
    with pytest.raises(StorageError, match=r"^none of the 2 checkpoints in flaky://bucket/run can be read$"):
        store.load_latest()


def test_ray_mode_waits_for_storage_that_comes_back_and_takes_the_newest(tiny_config, flaky):
    write_ray_checkpoints(tiny_config(), "flaky://bucket/run", (2, 4))
    store = RayCheckpoints(Dist(), RunFolder("flaky://bucket/run", timeout_s=30))
    outage(2.5)
    assert store.load_latest()["step"] == 4  # not 2: unreachable is not corrupt
    assert flaky.calls_while_down >= 2


def test_ray_mode_ends_without_fallback_when_storage_stays_away(tiny_config, flaky, caplog):
    write_ray_checkpoints(tiny_config(), "flaky://bucket/run", (2, 4))
    store = RayCheckpoints(Dist(), RunFolder("flaky://bucket/run", timeout_s=2))
    store.candidates = lambda: [4, 2]  # listed before the outage began
    flaky.down.set()
    with pytest.raises(StorageUnreachable, match=r"storage did not answer for 2 s"):
        store.load_latest()
    assert "trying the one before" not in caplog.text


def test_local_mode_tells_an_io_error_from_a_corrupt_file(tiny_config, tmp_path, monkeypatch, caplog):
    """A network file system that fails reads with EIO: waited out, then the run ends; never the older file."""
    from pathlib import Path

    cfg = tiny_config()
    store = FolderCheckpoints(tmp_path, keep=3, timeout_s=2)
    state = TrainState.create(cfg, torch.device("cpu"), Dist())
    for step in (2, 4):
        state.step = step
        store.save(step, build_payload(state, cfg, [state.rank_state()]), {})
    real_read = Path.read_bytes

    def eio(self):
        if self.name == "ckpt-00000004.pt":
            raise OSError(errno.EIO, "Input/output error")
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", eio)
    with pytest.raises(StorageUnreachable, match="ckpt-00000004.pt: storage did not answer for 2 s"):
        store.load_latest()
    assert "trying the one before" not in caplog.text


# --- Ray Train's own storage calls --------------------------------------------------------------------------------
def test_ray_trains_filesystem_waits_out_an_outage_and_gives_up_after_it(flaky, tmp_path):
    """What Ray Train is given for object storage (launch/ray_train.py): its checkpoint copies and its controller's
    record write wait an outage out, and fail with StorageUnreachable when it lasts."""
    import pyarrow.fs as pafs

    from distgan.io.retrying_arrow_fs import RetryingHandler

    inner = pafs.PyFileSystem(pafs.FSSpecHandler(flaky()))
    fs = pafs.PyFileSystem(RetryingHandler(inner, timeout_s=30))
    (tmp_path / "checkpoint_00000002").mkdir()
    (tmp_path / "checkpoint_00000002" / "checkpoint.pt").write_bytes(b"weights" * 1000)
    outage(2.5)
    fs.create_dir("bucket/run/checkpoint_00000002")
    pafs.copy_files(str(tmp_path / "checkpoint_00000002"), "bucket/run/checkpoint_00000002",
                    destination_filesystem=fs)  # Ray Train's checkpoint upload
    with fs.open_output_stream("bucket/run/checkpoint_manager_snapshot.json") as f:  # its controller's record
        f.write(b"{}")
    assert flaky.calls_while_down >= 2
    with fs.open_input_file("bucket/run/checkpoint_00000002/checkpoint.pt") as f:
        assert f.read() == b"weights" * 1000

    short = pafs.PyFileSystem(RetryingHandler(inner, timeout_s=2))
    flaky.down.set()
    with pytest.raises(StorageUnreachable, match="writing bucket/run/checkpoint_manager_snapshot.json: storage did"):
        with short.open_output_stream("bucket/run/checkpoint_manager_snapshot.json") as f:
            f.write(b"{}")


def test_a_request_the_store_refused_is_not_waited_for():
    """A 403 (pyarrow says ACCESS_DENIED in an OSError) will not pass by waiting: raised at once."""
    clock = FakeClock()

    def denied():
        raise OSError("When reading information for key 'run/x' in bucket 'b': AWS Error ACCESS_DENIED during "
                      "HeadObject operation")

    with pytest.raises(OSError, match="ACCESS_DENIED"):
        with_retries(denied, "reading x", 100, sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.sleeps == []


def test_a_final_copy_that_fails_keeps_the_staging_folder(flaky, monkeypatch):
    """At close nothing comes after: a copy refused for good (a 403) leaves the files in the staging folder,
    marked .kept (never removed by a later start), instead of deleting the only copy."""
    from distgan.io.run_folder import KEPT_MARKER

    folder = RunFolder("flaky://bucket/run-final", timeout_s=2)
    (folder.local / "generators").mkdir()
    (folder.local / "generators" / "generator-00000100.pt").write_bytes(b"the last export")
    real_put = type(folder.fs).put_file

    def refused(self, lpath, rpath, **kwargs):
        if lpath.endswith(".pt"):
            raise PermissionError("Access Denied")
        return real_put(self, lpath, rpath, **kwargs)

    monkeypatch.setattr(type(folder.fs), "put_file", refused)
    folder.close()
    assert (folder.local / "generators" / "generator-00000100.pt").read_bytes() == b"the last export"
    assert (folder.local / KEPT_MARKER).exists()
