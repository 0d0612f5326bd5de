"""User errors: mistakes the user can fix, printed as one line with exit status 2 (cli.run_main)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad path, bad value)."""


class ConfigError(UserError, ValueError):
    """A wrong key, type or value; the message names the key."""


class DataSourceError(UserError, ValueError):
    """A missing, empty or unreadable data source, or one for another model."""


class UnusableData(DataSourceError):
    """No readable image in any shard a loader worker got: a retry would fail alike."""


class StorageError(UserError):
    """A run folder or checkpoint location that cannot be written or read."""


class UnreadableFile(StorageError):
    """A file that does not read back (cut short, corrupt): an older one may do."""


class Diverged(RuntimeError):
    """A non-finite loss or gradient: one line naming step and value, exit status 1."""


def first_line(exc: BaseException) -> str:
    """An exception's first line, or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def first_sentence(exc: BaseException) -> str:
    """An exception's first sentence across line breaks (torch wraps mid-sentence)."""
    text = " ".join(str(exc).split())
    end = text.find(". ")
    return (text[: end + 1] if end >= 0 else text) or type(exc).__name__


class UnsafeFile(UserError):
    """A file holding a type distgan never writes (it could run code): never skipped for an older one."""


class StorageUnreachable(StorageError):
    """Storage silent for run.storage_timeout_s: the run ends, never using older files."""
