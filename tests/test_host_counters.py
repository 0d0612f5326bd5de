"""The bench's host counters (distgan/bench/host_counters.py) see what really happened between two snapshots."""

import mmap
import os
import signal
import subprocess
import sys
import threading

import pytest

from distgan.bench.host_counters import HostCounters

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")

SIZE = 64 * 2**20  # bytes of fresh memory touched, one write per 4 KiB page

# Burns 0.4 s of CPU, says so, then waits (alive, so that the second snapshot still sees it) until stdin closes.
BURNER = """import sys, time
start = time.process_time()
while time.process_time() - start < 0.5:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""


def pages_touched(size: int) -> int:
    """Pages a fresh allocation of size bytes faults in: 4 KiB ones, or 2 MiB ones where the kernel maps
    transparent huge pages for every allocation."""
    try:
        always = "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        always = False
    return size // (2**21 if always else 2**12)


def detached(script: str) -> tuple[int, subprocess.Popen]:
    """script run by a process that is not this one's descendant (its parent, a shell, exits at once: it is
    re-parented away), its stdout still on the returned pipe. Returns (its pid, the pipe's holder)."""
    shell = subprocess.Popen(["sh", "-c", '"$0" -c "$1" & echo $!', sys.executable, script],
                             stdout=subprocess.PIPE, text=True)
    pid = int(shell.stdout.readline())
    shell.wait(timeout=30)
    return pid, shell


def test_counts_page_faults_and_the_cpu_of_other_processes():
    """A child that burns 0.4 s is this process's own (a loader process); a process started apart, burning as
    much, is another process."""
    start = HostCounters.now()
    child = subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    other_pid, other = detached(BURNER.replace("sys.stdin.read()", "time.sleep(120)"))
    try:
        fresh = mmap.mmap(-1, SIZE)  # new pages straight from the kernel (malloc might reuse freed ones)
        for offset in range(0, SIZE, 4096):
            fresh[offset] = 1
        assert child.stdout.readline().strip() == "burnt"
        assert other.stdout.readline().strip() == "burnt"
        per_step = HostCounters.now().per_step_since(start, steps=2)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
        os.kill(other_pid, signal.SIGKILL)
    assert per_step["minor_faults_per_step"] >= 0.9 * pages_touched(SIZE) / 2
    assert per_step["cpu_wait_ms_per_step"] >= 0
    others = per_step["top_others"]
    other_ms = sum(ms for name, ms in others.items() if name.startswith(f"{other_pid} "))
    assert other_ms >= 400 / 2, others  # its 0.5 s (less /proc's rounding), per step of 2
    assert not any(name.startswith(f"{child.pid} ") for name in others), "this process's own child is no other"
    assert per_step["children_cpu_ms_per_step"] >= 400 / 2  # the same burner, as a child
    assert per_step["others_cpu_ms_per_step"] >= other_ms


def test_a_thread_that_ends_between_the_snapshots_takes_only_its_own_wait():
    """Run-queue waits are summed per thread: the total of a thread gone by the second snapshot is not
    subtracted from the others' (which gave a negative wait)."""
    ready = threading.Event()
    finish = threading.Event()

    def waits_then_ends():
        ready.set()
        finish.wait()

    thread = threading.Thread(target=waits_then_ends)
    thread.start()
    ready.wait()
    start = HostCounters.now()
    tid = thread.native_id
    start.wait_s[tid] += 5.0  # as if it had waited 5 s for a CPU before the first snapshot
    finish.set()
    thread.join()
    assert HostCounters.now().per_step_since(start, steps=1)["cpu_wait_ms_per_step"] >= 0
