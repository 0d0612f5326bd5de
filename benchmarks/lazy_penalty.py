"""The lazy penalty (train.gp_every=k) on the CPU: steps/s for each k, and sample quality (SWD on the demo faces)
for several seeds at equal steps and at equal wall-clock time (docs/benchmarks.md records a run).

    python benchmarks/lazy_penalty.py --ks 1,2,4,8 --seeds 0,1,2 --steps 600 --json lazy.json

Speed: one state per k in this process, timed in interleaved rounds (k=1, 2, 4, 8, k=1, ...) so that a busy
moment of the machine falls on every k alike; the median round counts. Quality: one local-mode training run per
(k, seed) on configs/demo.yaml, evaluated (SWD, the demo's eval settings) at step --steps and at the step that
k reaches in the time k=1 takes for --steps (its steps/s ratio times --steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distgan.config import load_config  # noqa: E402
from distgan.data.sources import resolve_shards  # noqa: E402
from distgan.data.stream import RealBatches, ShardStream  # noqa: E402
from distgan.engine.distributed import Dist  # noqa: E402
from distgan.engine.state import TrainState  # noqa: E402
from distgan.engine.step import train_step  # noqa: E402


def positive_ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return values


def speeds(ks: list[int], steps: int, rounds: int, warmup: int) -> dict[int, list[float]]:
    """Generator steps/s of each k, per round."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    runs = {}
    for k in ks:
        cfg = load_config(ROOT / "configs" / "demo.yaml", [f"train.gp_every={k}", "train.device=cpu"])
        state = TrainState.create(cfg, torch.device("cpu"), Dist())
        stream = ShardStream(resolve_shards(cfg), cfg.train.batch_size, cfg.model.image_size, cfg.model.channels,
                             shuffle_buffer=cfg.data.shuffle_buffer)
        real = RealBatches(stream, 0, torch.device("cpu"))
        for _ in range(warmup):
            train_step(state, real, cfg.train, Dist())
        runs[k] = (cfg, state, real)
    measured: dict[int, list[float]] = {k: [] for k in ks}
    for r in range(rounds):
        for k, (cfg, state, real) in runs.items():
            started = time.perf_counter()
            for _ in range(steps):
                train_step(state, real, cfg.train, Dist())
            measured[k].append(steps / (time.perf_counter() - started))
        print(f"round {r + 1}/{rounds}: " + "  ".join(f"k={k} {measured[k][-1]:.2f}" for k in ks), flush=True)
    return measured


def swd_by_step(run_dir: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return {e.step: e.value for e in acc.Scalars("eval/swd")}


def quality(k: int, seed: int, steps: int, equal_time_steps: int, root: Path) -> dict[str, float]:
    from distgan.launch.local import train_local

    last = max(steps, equal_time_steps)
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        f"train.gp_every={k}", f"train.seed={seed}", f"train.steps={last}", "train.device=cpu", "run.mode=local",
        f"eval.every={steps}", f"log.checkpoint_every={last}", "log.sample_every=100000", "log.progress=false",
        f"run.root={root}", f"run.name=k{k}-s{seed}", "eval.at_start=false"])
    started = time.perf_counter()
    train_local(cfg, root / f"k{k}-s{seed}")
    swd = swd_by_step(root / f"k{k}-s{seed}")
    return {"swd_equal_steps": swd[steps], "swd_equal_time": swd[equal_time_steps] if equal_time_steps in swd
            else swd[last], "equal_time_steps": equal_time_steps, "seconds": time.perf_counter() - started}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", type=positive_ints, default=[1, 2, 4, 8])
    p.add_argument("--seeds", type=positive_ints, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600, help="training steps of the equal-steps comparison")
    p.add_argument("--speed-steps", type=int, default=40, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--speed-only", action="store_true", help="the steps/s part only")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.steps < 1 or args.speed_steps < 1 or args.rounds < 1 or 1 not in args.ks or min(args.ks) < 1:
        p.error("--steps, --speed-steps, --rounds must be >= 1, and --ks must hold 1 (the reference) and ks >= 1")
    measured = speeds(args.ks, args.speed_steps, args.rounds, warmup=5)
    median = {k: statistics.median(v) for k, v in measured.items()}
    out = {"date": time.strftime("%Y-%m-%d"), "device": "cpu", "threads": torch.get_num_threads(),
           "steps_per_s": measured, "median_steps_per_s": median,
           "speedup_vs_k1": {k: median[k] / median[1] for k in args.ks}, "quality": {}}
    print("steps/s (median of rounds): " + "  ".join(f"k={k} {median[k]:.2f} ({median[k] / median[1]:.2f}x)"
                                                    for k in args.ks), flush=True)
    with tempfile.TemporaryDirectory() as root:
        for k in [] if args.speed_only else args.ks:
            equal_time = int(round(args.steps * median[k] / median[1] / 10)) * 10  # a multiple of 10 steps
            rows = [quality(k, seed, args.steps, max(equal_time, args.steps), Path(root)) for seed in args.seeds]
            out["quality"][k] = rows
            for key in ("swd_equal_steps", "swd_equal_time"):
                values = [r[key] for r in rows]
                print(f"k={k} {key}: mean {statistics.mean(values):.4f}, seeds {[round(v, 4) for v in values]}"
                      + (f" (at step {rows[0]['equal_time_steps']})" if key == "swd_equal_time" else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
