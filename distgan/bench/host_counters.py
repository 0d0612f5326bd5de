"""What the host did during timed steps (Linux /proc): page faults, run-queue waits and other processes'
CPU time, which explain a slow CPU step."""

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


def _threads_wait_s() -> dict[int, float] | None:
    """{thread id: seconds it has waited for a CPU}, for this process's threads."""
    tasks = Path("/proc/self/task")
    if not tasks.exists():
        return None
    out = {}
    for task in tasks.iterdir():
        text = _read(task / "schedstat")  # "run_ns wait_ns timeslices"
        if text:
            out[int(task.name)] = int(text.split()[1]) / 1e9
    return out


def _other_processes_cpu_s() -> dict[int, tuple[str, float, bool]] | None:
    """{pid: (name, CPU seconds, descends from this process)} for every other process."""
    proc = Path("/proc")
    if not proc.exists():
        return None
    ticks, me, out, parents = os.sysconf("SC_CLK_TCK"), os.getpid(), {}, {}
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        text = _read(entry / "stat")
        if text:
            name = text[text.index("(") + 1:text.rindex(")")]
            fields = text[text.rindex(")") + 2:].split()  # state, ppid, ...
            parents[int(entry.name)] = int(fields[1])
            out[int(entry.name)] = name, (int(fields[11]) + int(fields[12])) / ticks, False  # utime, stime
    for pid, (name, seconds, _) in out.items():
        ancestor, seen = parents.get(pid), 0
        while ancestor not in (None, 0, me) and seen < 64:
            ancestor, seen = parents.get(ancestor), seen + 1
        out[pid] = name, seconds, ancestor == me
    return out


@dataclass
class HostCounters:
    faults: int = 0
    wait_s: dict[int, float] | None = None
    others: dict[int, tuple[str, float, bool]] | None = None

    @staticmethod
    def now() -> "HostCounters":
        return HostCounters(resource.getrusage(resource.RUSAGE_SELF).ru_minflt, _threads_wait_s(),
                            _other_processes_cpu_s())

    def per_step_since(self, start: "HostCounters", steps: int, top: int = 8) -> dict:
        out: dict = {"minor_faults_per_step": (self.faults - start.faults) / steps, "cpu_wait_ms_per_step": None,
                     "children_cpu_ms_per_step": None, "others_cpu_ms_per_step": None, "top_others": None}
        if self.wait_s is not None and start.wait_s is not None:
            # per thread, never below 0: an ended thread's id may still be listed, or reused, with a smaller total
            waited = sum(max(0.0, s - start.wait_s.get(tid, 0.0)) for tid, s in self.wait_s.items())
            out["cpu_wait_ms_per_step"] = 1000 * waited / steps
        if self.others is not None and start.others is not None:
            # by pid (a kernel worker's name changes); a process started meanwhile counts whole
            used = {pid: (f"{pid} {name}", 1000 * (seconds - start.others.get(pid, ("", 0.0, False))[1]) / steps,
                          child or start.others.get(pid, ("", 0.0, False))[2])
                    for pid, (name, seconds, child) in self.others.items()}
            used = {pid: u for pid, u in used.items() if u[1] > 0}
            out["children_cpu_ms_per_step"] = sum(ms for _, ms, child in used.values() if child)
            others = sorted(((label, ms) for label, ms, child in used.values() if not child), key=lambda kv: -kv[1])
            out["others_cpu_ms_per_step"] = sum(ms for _, ms in others)
            out["top_others"] = dict(others[:top])
        return out
