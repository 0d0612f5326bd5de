"""A run's folder on a path or an fsspec URL (then staged locally and uploaded by sync())."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

import fsspec

from distgan.errors import StorageUnreachable, first_line
from distgan.io.retry import DEFAULT_TIMEOUT_S, with_retries

log = logging.getLogger(__name__)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_durably(path: Path, write: Callable[[BinaryIO], None], tmp_suffix: str = ".tmp") -> None:
    """Temporary name, fsync, rename, fsync folder: after a crash or power loss path holds the old file or the
    whole new one. A killed writer's temporary is removed."""
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{tmp_suffix}")
    for stale in path.parent.glob(f".{path.name}.*{tmp_suffix}"):
        stale.unlink(missing_ok=True)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or an error in write(): the old file stays, no debris
        raise
    fsync_dir(path.parent)
    for folder in created:  # the first file of a new folder: the folder's own entry must last too
        fsync_dir(folder.parent)


def ensure_writable(folder: Path, what: str, keep: bool = True) -> Path:
    """Creates folder and checks that it takes a file: an error naming `what` now, not after the work.
    keep=False removes the folders it created."""
    from distgan.errors import StorageError, first_line

    folder = Path(folder).expanduser()
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    probe = folder / f".distgan-probe-{uuid.uuid4().hex}"  # unique on a filesystem that several hosts share
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"{what}: cannot write to {folder}: {first_line(exc)}") from None
    finally:
        for path in created if not keep else ():
            try:
                path.rmdir()
            except OSError:
                break
    return folder


def ensure_writable_file(path: Path, what: str) -> Path:
    """ensure_writable for a file written later (a --json), leaving no trace; ~ expanded."""
    from distgan.errors import StorageError

    path = Path(path).expanduser()
    if path.is_dir():
        raise StorageError(f"{what}: {path} is a folder; name a file in it")
    ensure_writable(path.parent, what, keep=False)
    return path


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def filesystem_of(location: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec's filesystem and path, or a StorageError (unknown scheme, missing package)."""
    from distgan.errors import StorageError, first_line

    try:
        return fsspec.core.url_to_fs(location)
    except ImportError as exc:
        raise StorageError(f"{location}: {first_line(exc)} (pip install 'distgan[cloud]' adds s3fs and gcsfs)") from None
    except ValueError as exc:
        raise StorageError(f"{location}: {first_line(exc)}") from None


STAGING_PREFIX = "distgan-run-"  # + the writer's pid: a folder whose process is gone was left by a killed worker
KEPT_MARKER = ".kept"  # in a staging folder whose final copy failed: the user's to copy, never removed


def remove_dead_staging_folders() -> None:
    """Removes staging folders of this user's dead processes (a killed worker never removes its own)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*-*"):
        pid = folder.name[len(STAGING_PREFIX):].split("-", 1)[0]
        try:
            if not pid.isdigit() or folder.stat().st_uid != os.getuid() or (folder / KEPT_MARKER).exists():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s, the staging folder of a process that is gone", folder)
        except OSError:  # not ours to signal, or gone meanwhile: leave it
            continue


class RunFolder:
    def __init__(self, location: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        """timeout_s: how long a call waits for storage that does not answer (run.storage_timeout_s)."""
        self.location, self.timeout_s = location, timeout_s
        self.fs, self.root = filesystem_of(location)
        self.remote = is_url(location)
        self._local = None if self.remote else Path(self.root)
        self._uploaded: dict[Path, tuple[int, int]] = {}
        self._uploader: threading.Thread | None = None
        self._last_sync = 0.0
        self.keep_staging = False  # a final copy that storage never took: the files stay for the user
        self._keep_newest: dict[str, int] = {}

    @property
    def local(self) -> Path:
        """Where this process writes: the run folder, or a staging folder for a URL."""
        if self._local is None:
            remove_dead_staging_folders()
            self._local = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
        return self._local

    def sync_soon(self, min_interval_s: float = 30.0) -> None:
        """sync() in a background thread, so no rank waits; at most every min_interval_s."""
        if not self.remote or self._local is None:
            return
        busy = self._uploader is not None and self._uploader.is_alive()
        if busy or time.monotonic() - self._last_sync < min_interval_s:
            return
        self._last_sync = time.monotonic()
        self._uploader = threading.Thread(target=self.sync, name="run-folder-sync", daemon=True)
        self._uploader.start()

    def close(self) -> None:
        """Final sync, waiting out an outage; a staging folder is then deleted."""
        if self._uploader is not None:
            self._uploader.join()
        self.sync(final=True)
        if self.remote and self._local is not None and not self.keep_staging:
            shutil.rmtree(self._local, ignore_errors=True)

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def _retrying(self, action: Callable, what: str):
        return with_retries(action, f"{what} {self.location}", self.timeout_s)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def glob(self, pattern: str) -> list[str]:
        return self._retrying(lambda: list(self.fs.glob(self.path(pattern))), "listing")

    def read_bytes(self, name: str) -> bytes:
        def read() -> bytes:
            with self.fs.open(self.path(name), "rb") as f:
                return f.read()

        return self._retrying(read, f"reading {name} in")

    def write_bytes(self, name: str, data: bytes) -> None:
        """Whole or not at all: locally through write_durably (an object store's put is atomic)."""
        target = self.path(name)

        def write() -> None:
            if self.remote:
                with self.fs.open(target, "wb") as f:
                    f.write(data)
            else:
                write_durably(Path(target), lambda f: f.write(data))

        self._retrying(write, f"writing {name} to")

    def exists(self, name: str, wait: bool = True) -> bool:
        """wait=False: one look, no retries (a per-log-step check must not hold training up)."""
        if not wait:
            return self.fs.exists(self.path(name))
        return self._retrying(lambda: self.fs.exists(self.path(name)), f"looking for {name} in")

    def remove_tree(self, name: str) -> None:
        self._retrying(lambda: self.fs.rm(self.path(name), recursive=True), f"removing {name} from")

    def remove(self, name: str) -> None:
        if self.exists(name):
            self._retrying(lambda: self.fs.rm(self.path(name)), f"removing {name} from")

    def sync(self, final: bool = False) -> None:
        """Uploads the staging folder's new or changed files; deletes remote copies of files pruned locally."""
        if not self.remote or self._local is None:
            return
        for file in [f for f in self._uploaded if not f.exists()]:
            try:
                self.fs.rm(self.path(file.relative_to(self.local).as_posix()))
            except FileNotFoundError:
                pass
            except Exception as exc:
                log.warning("could not delete %s from %s: %s", file.name, self.location, exc)
                continue
            del self._uploaded[file]
        for file in sorted(self.local.rglob("*")):
            if not file.is_file() or file.name.startswith("."):  # .NAME.tmp: a file being written
                continue
            try:
                stat = file.stat()
            except FileNotFoundError:  # pruned by the training thread since the listing (this runs beside it)
                continue
            signature = (stat.st_size, stat.st_mtime_ns)
            if self._uploaded.get(file) == signature:
                continue
            target = self.path(file.relative_to(self.local).as_posix())
            try:
                if final:  # nothing comes after: wait out an outage
                    self._retrying(lambda: self.fs.put_file(str(file), target), f"copying {file.name} to")
                else:
                    self.fs.put_file(str(file), target)
            except StorageUnreachable as exc:
                self._keep_for_the_user(exc)
                return
            except Exception as exc:  # a storage hiccup must not kill training: the next sync retries
                if final:  # no next sync: the staging folder holds the only copy
                    self._keep_for_the_user(exc)
                    continue
                log.warning("could not copy %s to %s: %s", file.name, target, exc)
                continue
            self._uploaded[file] = signature
        for pattern, keep in self._keep_newest.items():
            self._prune(pattern, keep)

    def _keep_for_the_user(self, exc: Exception) -> None:
        """A final copy failed: the staging folder stays, marked, and says where it is."""
        log.error("%s; the files not yet copied stay in %s (copy them to %s, then delete it)", first_line(exc),
                  self.local, self.location)
        self.keep_staging = True
        (self.local / KEPT_MARKER).write_text(f"{self.location}\n")

    def keep_newest(self, pattern: str, keep: int) -> None:
        """After each sync only the newest `keep` files matching pattern stay in the bucket, earlier attempts' too."""
        self._keep_newest[pattern] = keep

    def _prune(self, pattern: str, keep: int) -> None:
        try:
            for path in sorted(self.fs.glob(self.path(pattern)))[:-keep]:
                self.fs.rm(path)
        except Exception as exc:  # the next sync tries again
            log.warning("could not prune %s in %s: %s", pattern, self.location, exc)
