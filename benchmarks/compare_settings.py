"""A/B of two config settings that act on the whole process (speed.keep_host_memory, say): `distgan.bench` runs
in a fresh process for each round, the two settings alternating (and which goes first alternating too), so that
this machine's drifting load hits both alike. Prints each setting's rounds, best and median steps/s per mode, and
the median of the bench's host counters (docs/benchmarks.md has the results).

    .venv/bin/python benchmarks/compare_settings.py --a speed.keep_host_memory=false \\
        --b speed.keep_host_memory=true --rounds 4 -- --modes local,ray1 --steps 60 --warmup 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_KEYS = ("minor_faults_per_step", "cpu_wait_ms_per_step", "others_cpu_ms_per_step")


def one_round(overrides: list[str], bench_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder, "bench.json")
        done = subprocess.run([sys.executable, "-m", "distgan.bench", "--repeats", "1", *bench_args, *overrides,
                               "--json", str(out)], cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"distgan.bench failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", nargs="*", default=[], help="key=value overrides of setting A")
    p.add_argument("--b", nargs="*", default=[], help="key=value overrides of setting B")
    p.add_argument("--rounds", type=int, default=4, help="rounds of each setting")
    p.add_argument("--json", default="")
    p.add_argument("bench_args", nargs="*", help="after --: distgan.bench options (--modes, --steps, ...)")
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    settings = {"A": args.a, "B": args.b}
    results: dict[str, list[dict]] = {"A": [], "B": []}
    for r in range(args.rounds):
        for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
            results[name].append(one_round(settings[name], args.bench_args))
            modes = [m for m in ("local", "local_beside_ray", "ray1", "rayN", "plain") if m in results[name][-1]]
            print(f"round {r + 1} of {args.rounds}, {name} {' '.join(settings[name])}: "
                  + ", ".join(f"{m} {results[name][-1][m]['steps_per_s']:.2f}" for m in modes), flush=True)
    summary = {}
    for name, rounds in results.items():
        print(f"\n{name}: {' '.join(settings[name]) or '(defaults)'}")
        for mode in modes:
            rates = [r[mode]["steps_per_s"] for r in rounds]
            line = (f"  {mode:16s} steps/s {', '.join(f'{x:.2f}' for x in rates)}; best {max(rates):.2f}, "
                    f"median {statistics.median(rates):.2f}")
            hosts = [r[mode]["host"] for r in rounds if r[mode].get("host")]
            host = {k: statistics.median(h[k] for h in hosts) for k in HOST_KEYS
                    if hosts and all(h[k] is not None for h in hosts)}
            if host:
                line += "; host medians: " + ", ".join(f"{k} {v:.1f}" for k, v in host.items())
            print(line)
            summary[f"{name} {mode}"] = {"rounds": rates, "host_medians": host}
    for mode in modes:
        a, b = (statistics.median(summary[f"{n} {mode}"]["rounds"]) for n in ("A", "B"))
        print(f"{mode}: B / A = {b / a:.2f}x by median")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings, "bench_args": args.bench_args,
                                               "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
