"""Keep freed host memory inside the process, so that each training step reuses the last step's buffers.

A CPU training step allocates and frees the same activation tensors every iteration. glibc's malloc hands large
freed blocks back to the kernel: blocks above its mmap threshold are unmapped on free (the threshold starts at
128 KiB and only rises after such a free), and the heap is trimmed whenever more than the trim threshold lies
free at its top. The next step then touches fresh pages again, each one a page fault that the kernel must zero.
On the demo config that was about 10,000 minor faults per generator step, in every step of a Ray worker (which
never left that state) and in the first minutes of local mode (docs/benchmarks.md).

keep_freed_host_memory() fixes both thresholds with mallopt: blocks below 32 MiB (glibc's largest allowed mmap
threshold on 64-bit) come from the heap, and up to 1 GiB of free heap stays mapped. The thresholds apply to
every malloc arena, so also to the threads Ray Train runs the loop in. The cost: the process keeps up to that
much freed memory instead of returning it (its peak RSS is what it was). Other C libraries (musl, macOS) are left
as they are.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum for 64-bit (HEAP_MAX_SIZE / 2); larger values are refused
TRIM_THRESHOLD = 2**30


def keep_freed_host_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this whole process; True if they were set."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the C library this process already uses
    return (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
