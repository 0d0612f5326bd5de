"""User errors: mistakes the user can fix, each reported as one line and exit status 2 (no traceback).

Every layer raises these (config, data, storage, evaluation); only the command-line entry points
(distgan.cli.run_main) turn them into `error: ...` on stderr. A crash that is not the user's fault (a bug, a
diverged run) keeps its own type.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad path, bad value): printed as one line, exit status 2."""


class ConfigError(UserError, ValueError):
    """A wrong key, type or value in the configuration; the message names the key."""


class DataSourceError(UserError, ValueError):
    """A missing, empty or unreadable data source, or one written for another model."""


class UnusableData(DataSourceError):
    """Data that reads the same way on every retry: no readable image in any shard a loader worker was given."""


class StorageError(UserError):
    """A run folder or checkpoint location that cannot be written or read."""


class UnreadableFile(StorageError):
    """A file that is there but does not read back (a copy cut short, a corrupt file): an older one may do."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss or gradient; the message is one line naming the step and the value.
    Not a user error (exit status 1), but printed as one line too."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def first_sentence(exc: BaseException) -> str:
    """The first sentence of an exception's message, over line breaks (torch's unpickling errors wrap mid-sentence;
    its zip reader's run on for several sentences on one line)."""
    text = " ".join(str(exc).split())
    end = text.find(". ")
    return (text[: end + 1] if end >= 0 else text) or type(exc).__name__


class UnsafeFile(UserError):
    """A checkpoint, export or cache file that holds a type distgan never writes: loading it could run code.
    Never skipped for an older file: someone wrote it, and the user should know."""


class StorageUnreachable(StorageError):
    """Storage that did not answer for run.storage_timeout_s: the run ends without falling back to older files."""
