"""What the host did during timed steps (Linux /proc; None elsewhere): the numbers that explain a slow CPU step.

- minor page faults of this process (each a fresh page the kernel had to map and zero: see host_memory.py);
- the time this process's threads spent ready to run but waiting for a CPU (the kernel's run-queue delay,
  /proc/self/task/*/schedstat), i.e. how much other processes pushed the step off its cores;
- the CPU time every other process on the machine used meanwhile, with the largest users by name.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):  # a thread or process that just ended
        return None


def _threads_wait_s() -> float | None:
    tasks = Path("/proc/self/task")
    if not tasks.exists():
        return None
    total = 0
    for task in tasks.iterdir():
        text = _read(task / "schedstat")  # "run_ns wait_ns timeslices"
        if text:
            total += int(text.split()[1])
    return total / 1e9


def _other_processes_cpu_s() -> dict[int, tuple[str, float]] | None:
    """pid: (name, CPU seconds so far, user + system) of every other process."""
    proc = Path("/proc")
    if not proc.exists():
        return None
    ticks, me, out = os.sysconf("SC_CLK_TCK"), os.getpid(), {}
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        text = _read(entry / "stat")
        if text:
            name = text[text.index("(") + 1:text.rindex(")")]
            fields = text[text.rindex(")") + 2:].split()
            out[int(entry.name)] = name, (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return out


@dataclass
class HostCounters:
    faults: int = 0
    wait_s: float | None = None
    others: dict[int, tuple[str, float]] | None = None

    @staticmethod
    def now() -> "HostCounters":
        return HostCounters(resource.getrusage(resource.RUSAGE_SELF).ru_minflt, _threads_wait_s(),
                            _other_processes_cpu_s())

    def per_step_since(self, start: "HostCounters", steps: int, top: int = 8) -> dict:
        out: dict = {"minor_faults_per_step": (self.faults - start.faults) / steps,
                     "cpu_wait_ms_per_step": None, "others_cpu_ms_per_step": None, "top_others": None}
        if self.wait_s is not None and start.wait_s is not None:
            out["cpu_wait_ms_per_step"] = 1000 * (self.wait_s - start.wait_s) / steps
        if self.others is not None and start.others is not None:
            # by pid: a kernel worker's name changes with its work item; a process started meanwhile counts whole
            used = {f"{pid} {name}": 1000 * (seconds - start.others.get(pid, ("", 0.0))[1]) / steps
                    for pid, (name, seconds) in self.others.items()}
            used = {k: ms for k, ms in used.items() if ms > 0}
            out["others_cpu_ms_per_step"] = sum(used.values())
            out["top_others"] = dict(sorted(used.items(), key=lambda kv: -kv[1])[:top])
        return out
