"""Storage calls that ride out an outage: transient errors are retried with backoff until a deadline."""

from __future__ import annotations

import errno
import logging
import time
from typing import Callable, TypeVar

from distgan.errors import StorageUnreachable, first_line

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 300.0  # run.storage_timeout_s
FIRST_DELAY_S, MAX_DELAY_S = 1.0, 30.0
# errors that say the thing is not there or not allowed: the answer will not change by asking again
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# what pyarrow and s3fs say, in an OSError's text, of a request the store refused: asking again will not help
REFUSED = ("ACCESS_DENIED", "AccessDenied", "Access Denied", "NO_SUCH_BUCKET", "NoSuchBucket", "INVALID_ACCESS_KEY",
           "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "403 Forbidden")  # a full or read-only disk: someone must act first
# clients that raise their own connection errors rather than OSError (botocore's, aiohttp's, google-auth's)
TRANSIENT_NAMES = ("Connect", "Timeout", "Throttl", "SlowDown", "ServiceUnavailable", "Disconnected")


def is_transient(exc: BaseException) -> bool:
    """Whether asking again may succeed: I/O errors, timeouts and lost connections, not missing files."""
    if isinstance(exc, PERMANENT) or getattr(exc, "errno", None) in FULL or any(w in str(exc) for w in REFUSED):
        return False
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    return any(word in cls.__name__ for cls in type(exc).__mro__ for word in TRANSIENT_NAMES)


def with_retries(action: Callable[[], T], what: str, timeout_s: float, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> T:
    """action(), retried after 1, 2, 4, ... 30 s while it fails transiently, for timeout_s; then StorageUnreachable."""
    deadline = clock() + timeout_s
    delay = FIRST_DELAY_S
    while True:
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc):
                raise
            left = deadline - clock()
            if left <= 0:
                raise StorageUnreachable(f"{what}: storage did not answer for {timeout_s:g} s "
                                         f"(run.storage_timeout_s): {first_line(exc)}") from None
            wait = min(delay, left)
            log.warning("%s: %s; retrying in %.0f s (%.0f s left)", what, first_line(exc), wait, left)
            sleep(wait)
            delay = min(delay * 2, MAX_DELAY_S)
