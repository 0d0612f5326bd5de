"""The bench's host counters (distgan/engine/host_counters.py) see what really happened between two snapshots."""

import mmap
import subprocess
import sys

import pytest

from distgan.engine.host_counters import HostCounters

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")

SIZE = 64 * 2**20  # bytes of fresh memory touched, one write per 4 KiB page

# Burns 0.4 s of CPU, says so, then waits (alive, so that the second snapshot still sees it) until stdin closes.
BURNER = """import sys, time
start = time.process_time()
while time.process_time() - start < 0.4:
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


def test_counts_page_faults_and_the_cpu_of_other_processes():
    start = HostCounters.now()
    burner = subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        fresh = mmap.mmap(-1, SIZE)  # new pages straight from the kernel (malloc might reuse freed ones)
        for offset in range(0, SIZE, 4096):
            fresh[offset] = 1
        assert burner.stdout.readline().strip() == "burnt"
        per_step = HostCounters.now().per_step_since(start, steps=2)
    finally:
        burner.stdin.close()
        burner.wait(timeout=30)
    assert per_step["minor_faults_per_step"] >= 0.9 * pages_touched(SIZE) / 2
    assert per_step["cpu_wait_ms_per_step"] >= 0
    burner_ms = sum(ms for name, ms in per_step["top_others"].items() if name.startswith(f"{burner.pid} "))
    assert burner_ms >= 400 / 2, per_step["top_others"]  # its 0.4 s (and its start-up), per step of 2
    assert per_step["others_cpu_ms_per_step"] >= burner_ms
