"""Keep freed host memory in the process, so each CPU step reuses the last step's pages instead of
page-faulting fresh ones (docs/workarounds.md: glibc's malloc thresholds)."""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum for 64-bit (HEAP_MAX_SIZE / 2); larger values are refused
TRIM_THRESHOLD = 2**30


def keep_freed_host_memory() -> bool:
    """Set glibc's mmap and trim thresholds, process-wide; True if set."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the C library this process already uses
    return (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
