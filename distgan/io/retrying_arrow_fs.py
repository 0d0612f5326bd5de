"""A pyarrow filesystem that retries every call (io/retry.py), for Ray Train's storage calls (docs/workarounds.md)."""

from __future__ import annotations

import io
from typing import Callable, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from distgan.errors import StorageUnreachable
from distgan.io.retry import with_retries

T = TypeVar("T")


class RetryingHandler(pafs.FileSystemHandler):
    """Every call of `inner` retried; files move whole, so a retry repeats a whole transfer."""

    def __init__(self, inner: pafs.FileSystem, timeout_s: float):
        self.inner, self.timeout_s = inner, timeout_s

    def __reduce__(self):  # Ray sends the filesystem to its controller and workers
        return RetryingHandler, (self.inner, self.timeout_s)

    def _retry(self, action: Callable[[], T], what: str, path: str = "") -> T:
        try:
            return with_retries(action, f"{what} {path}".strip(), self.timeout_s)
        except StorageUnreachable as exc:  # Ray would retry an "AWS Error" again (docs/workarounds.md)
            raise StorageUnreachable(str(exc).replace("AWS Error", "AWS error")) from None

    def get_type_name(self) -> str:
        return f"retrying+{self.inner.type_name}"

    def equals(self, other) -> bool:
        return isinstance(other, RetryingHandler) and self.inner.equals(other.inner)

    def normalize_path(self, path: str) -> str:
        return self.inner.normalize_path(path)

    def get_file_info(self, paths):
        return self._retry(lambda: self.inner.get_file_info(paths), "looking up", ", ".join(paths[:3]))

    def get_file_info_selector(self, selector):
        return self._retry(lambda: self.inner.get_file_info(selector), "listing", selector.base_dir)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._retry(lambda: self.inner.create_dir(path, recursive=recursive), "creating", path)

    def delete_dir(self, path: str) -> None:
        self._retry(lambda: self.inner.delete_dir(path), "deleting", path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._retry(lambda: self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok), "emptying", path)

    def delete_root_dir_contents(self) -> None:
        self._retry(lambda: self.inner.delete_dir_contents("/", accept_root_dir=True), "emptying", "/")

    def delete_file(self, path: str) -> None:
        self._retry(lambda: self.inner.delete_file(path), "deleting", path)

    def move(self, src: str, dest: str) -> None:
        self._retry(lambda: self.inner.move(src, dest), "moving", src)

    def copy_file(self, src: str, dest: str) -> None:
        self._retry(lambda: self.inner.copy_file(src, dest), "copying", src)

    def _read(self, path: str) -> pa.BufferReader:
        def read() -> bytes:
            with self.inner.open_input_stream(path) as f:
                return f.read()

        return pa.BufferReader(self._retry(read, "reading", path))

    def open_input_stream(self, path: str):
        return self._read(path)

    def open_input_file(self, path: str):
        return self._read(path)

    def open_output_stream(self, path: str, metadata):
        return pa.PythonFile(WholeWrite(self, path, metadata), mode="w")

    def open_append_stream(self, path: str, metadata):
        raise NotImplementedError("appending to an object store: Ray Train does not")


class WholeWrite(io.RawIOBase):
    """Collects the bytes and writes them in one retried call at close."""

    def __init__(self, handler: RetryingHandler, path: str, metadata):
        super().__init__()
        self.handler, self.path, self.metadata, self.buffer = handler, path, metadata, io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self.buffer.write(data)

    def close(self) -> None:
        if self.closed:
            return
        data = self.buffer.getvalue()

        def put() -> None:
            with self.handler.inner.open_output_stream(self.path, metadata=self.metadata) as f:
                f.write(data)

        try:
            self.handler._retry(put, "writing", self.path)
        finally:
            super().close()


def retrying_filesystem(storage: str, timeout_s: float) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) for Ray Train's RunConfig(storage_filesystem=..., storage_path=...)."""
    inner, path = pafs.FileSystem.from_uri(storage)
    return pafs.PyFileSystem(RetryingHandler(inner, timeout_s)), path
