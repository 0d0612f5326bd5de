"""python -m distgan.bench [--config FILE] [key=value ...] [--modes ...] [--json OUT]
Times distgan's training step, locally and in Ray workers, against a plain PyTorch WGAN-GP loop
(docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from distgan.cli import run_main
from distgan.config import Config, from_dict, load_config, to_dict
from distgan.data.sources import resolve_shards
from distgan.data.stream import RealBatches, ShardStream, loader_workers
from distgan.launch.ray_output import quiet_worker_logging
from distgan.engine.distributed import Dist, split
from distgan.engine.flops import count_step_flops, peak_flops
from distgan.engine.graph_step import WARMUP_STEPS, StaticStep, cuda_graph_refusal
from distgan.engine.health import NonFiniteWatch
from distgan.bench.host_counters import HostCounters
from distgan.engine.host_memory import keep_freed_host_memory
from distgan.engine.loop import record_step_metrics
from distgan.io.run_folder import ensure_writable_file
from distgan.engine.speed import Speed
from distgan.engine.state import TrainState
from distgan.engine.step import train_step
from distgan.errors import UserError

PHASES = ("data", "critic", "allreduce", "generator")


class PhaseTimer:
    """timer(phase) context: seconds per phase, the device synchronized at both ends."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, {p: 0.0 for p in PHASES}
        self._name, self._start = "", 0.0

    def __call__(self, name: str):
        self._name = name
        return self

    def __enter__(self):
        sync(self.device)
        self._start = time.perf_counter()

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds[self._name] += time.perf_counter() - self._start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory in this mode; on a CPU, the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(cfg: Config, dist: Dist, device: torch.device, steps: int, warmup: int, cpus: float) -> dict[str, Any]:
    """distgan's training step on this rank, with its real data stream."""
    t = cfg.train
    local = split(t.batch_size, dist.rank, dist.world_size)[1]
    state = TrainState.create(cfg, device, dist)
    workers = loader_workers(cfg.data.num_workers, cpus)
    stream = ShardStream(resolve_shards(cfg), local, cfg.model.image_size, cfg.model.channels, dist.rank,
                         dist.world_size, workers, t.seed, cfg.data.shuffle_buffer)
    real = RealBatches(stream, workers, device)
    # over gp_every steps: with the lazy penalty only one critic update in gp_every has the double backward
    flops = count_step_flops(state, lambda: [train_step(state, real, t, dist) for _ in range(t.gp_every)]) / t.gp_every
    watch, sums = NonFiniteWatch(device, state.objective.watched), {}
    run_step = StaticStep(state, t, dist, capture=state.speed.cuda_graph and not cuda_graph_refusal(cfg, device))

    def step() -> None:  # the loop's work at every step
        record_step_metrics(state.step, run_step(real), watch, sums)

    # the graph's warm-up and one capture per phase of the lazy penalty happen before the timing
    for _ in range(warmup + (WARMUP_STEPS + t.gp_every if run_step.capture else 0)):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    counters = HostCounters.now()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    rate = steps / (time.perf_counter() - start)
    host = HostCounters.now().per_step_since(counters, steps)
    timer = PhaseTimer(device)
    split_steps = max(1, steps // 2)
    for _ in range(split_steps):
        train_step(state, real, t, dist, timer=timer)
    total = sum(timer.seconds.values())
    images = t.batch_size * (t.n_critic if t.fresh_real_per_critic_step else 1)
    peak = peak_flops(device, state.speed.bf16, cfg.speed.tf32)
    out = {"steps_per_s": rate, "images_per_s": rate * images, "flops_per_step": flops,
           "tflops_per_s": flops * rate / 1e12, "mfu": flops * rate / peak if peak else None,
           "split": {p: s / total for p, s in timer.seconds.items()}, "peak_memory_mb": peak_memory_mb(device),
           "host": host}
    started, n = time.perf_counter(), 0
    while time.perf_counter() - started < 2.0 or n < 5:  # the loader alone
        real()
        n += 1
    sync(device)
    out["loader_images_per_s"] = n * local * dist.world_size / (time.perf_counter() - started)
    out["loader_workers"] = workers
    return out


def pick_device(cfg: Config) -> torch.device:
    from distgan.launch.local import pick_device as local_device

    return local_device(cfg.train.device)


def ray_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    cfg = from_dict(config["config"])
    dist = Dist.from_process_group()
    device = ray.train.torch.get_device() if cfg.ray.use_gpu else torch.device("cpu")
    quiet_worker_logging(cfg.ray.log_level)
    result = measure(cfg, dist, device, config["steps"], config["warmup"], config["cpus"])
    metrics = {"result": json.dumps(result), "threads": torch.get_num_threads()}
    # Train V2 keeps in Result only metrics that came with a checkpoint: rank 0 attaches a one-file one
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "result.json").write_text(metrics["result"])
        checkpoint = ray.train.Checkpoint.from_directory(folder) if dist.is_main else None
        ray.train.report(metrics, checkpoint=checkpoint)


@contextmanager
def ray_cluster(cfg: Config):
    """ray.address's cluster, or a private one stopped on leaving, so later modes never run beside it."""
    import ray

    from distgan.launch.ray_train import connect

    started = connect(cfg)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def measure_local(cfg: Config, device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    return measure(cfg, Dist(), device, steps, warmup, len(os.sched_getaffinity(0)))


def measure_ray(cfg: Config, workers: int, steps: int, warmup: int) -> dict[str, Any]:
    """The same measurement in `workers` Ray Train workers."""
    import ray
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from distgan.launch.ray_train import fit

    storage = f"/tmp/distgan-bench-{os.getpid()}"
    with ray_cluster(cfg):
        # CPU workers share the largest node's cores (the whole cluster's would not fit on one node of several)
        largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=1)
        cpus = cfg.ray.cpus_per_worker if cfg.ray.use_gpu else max(1, int(largest) // workers)
        resources = {"CPU": cpus, **({"GPU": 1} if cfg.ray.use_gpu else {})}
        trainer = TorchTrainer(
            ray_worker, train_loop_config={"config": to_dict(cfg), "steps": steps, "warmup": warmup, "cpus": cpus},
            torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=cfg.ray.use_gpu, resources_per_worker=resources),
            run_config=RunConfig(name=f"bench-{os.getpid()}-{workers}", storage_path=storage,
                                 logging_config=ray.train.LoggingConfig(log_level=cfg.ray.log_level)))
        try:
            result = fit(trainer)
        finally:
            shutil.rmtree(storage, ignore_errors=True)
    out = json.loads(result.metrics["result"])
    out["cpus_per_worker"], out["threads"] = cpus, result.metrics["threads"]
    return out


def measure_local_beside_ray(cfg: Config, device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    """Local mode beside an idle Ray cluster."""
    with ray_cluster(cfg):
        return measure_local(cfg, device, steps, warmup)


def measure_plain(cfg: Config, device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from plain_wgangp import plain_step, steps_per_s

    from distgan.engine.speed import resolve_precision

    m, t = cfg.model, cfg.train
    step = plain_step(m.image_size, m.width, m.z_dim, t.batch_size, t.n_critic, device, dropout=m.critic_dropout,
                      bf16=resolve_precision(cfg.speed.precision, device) == "bf16", channels=m.channels,
                      fresh_real=t.fresh_real_per_critic_step, tf32=cfg.speed.tf32)
    started = {}
    rate = steps_per_s(step, steps, warmup, device, on_start=lambda: started.update(counters=HostCounters.now()))
    images = t.batch_size * (t.n_critic if t.fresh_real_per_critic_step else 1)
    return {"steps_per_s": rate, "images_per_s": rate * images,
            "host": HostCounters.now().per_step_since(started["counters"], steps)}


def measure_eval(cfg: Config, device: torch.device) -> dict[str, Any]:
    from distgan.evaluation.evaluator import Evaluator

    state = TrainState.create(cfg, device, Dist())
    evaluator = Evaluator(cfg, Dist(), device)
    evaluator(state.G_ema)  # warm-up
    results = evaluator(state.G_ema)
    return {"seconds": results["eval/seconds"], "num_samples": cfg.eval.num_samples, "metrics": cfg.eval.metrics}


def host_line(host: dict[str, Any]) -> str:
    parts = [f"{host['minor_faults_per_step']:.0f} page faults/step"]
    if host["cpu_wait_ms_per_step"] is not None:
        parts.append(f"this process's threads waited {host['cpu_wait_ms_per_step']:.1f} ms/step for a CPU")
    if host.get("children_cpu_ms_per_step"):
        parts.append(f"its loader processes used {host['children_cpu_ms_per_step']:.1f} ms CPU/step")
    if host["others_cpu_ms_per_step"] is not None:
        top = ", ".join(f"{name.split(' ', 1)[1]} {ms:.1f}" for name, ms in list(host["top_others"].items())[:3])
        parts.append(f"other processes used {host['others_cpu_ms_per_step']:.1f} ms CPU/step ({top})")
    return "; ".join(parts)


def report(results: dict[str, Any], cfg: Config) -> str:
    lines = [f"device: {results['device']}   config: {results['config_summary']}"]
    for mode in ("local", "local_beside_ray", "ray1", "rayN", "plain"):
        r = results.get(mode)
        if not r:
            continue
        extra = ""
        if "tflops_per_s" in r:
            mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
            extra = f", {r['tflops_per_s']:.2f} TFLOP/s{mfu}, peak memory {r['peak_memory_mb']:.0f} MB"
            if mode == "rayN":  # images/s count every worker's batch; FLOPs and memory are rank 0's
                extra += " (TFLOP/s, MFU and memory per worker)"
        lines.append(f"{mode:16s} {r['steps_per_s']:8.2f} steps/s {r['images_per_s']:10.0f} real images/s{extra}")
        if "split" in r:
            lines.append(" " * 17 + "time split: " + ", ".join(f"{p} {100 * f:.0f}%" for p, f in r["split"].items()))
        if r.get("host"):
            lines.append(" " * 17 + "host: " + host_line(r["host"]))
    for name, (a, b) in {"local / plain": ("local", "plain"), "ray1 / local": ("ray1", "local"),
                         "rayN / local": ("rayN", "local"), "local_beside_ray / local": ("local_beside_ray", "local"),
                         "ray1 / local_beside_ray": ("ray1", "local_beside_ray")}.items():
        if results.get(a) and results.get(b):
            lines.append(f"{name}: {results[a]['steps_per_s'] / results[b]['steps_per_s']:.2f}x")
    if results.get("local"):
        loader, used = results["local"]["loader_images_per_s"], results["local"]["images_per_s"]
        lines.append(f"loader alone ({results['local']['loader_workers']} loader processes): {loader:.0f} images/s "
                     f"= {loader / used:.1f}x what training consumes")
    if results.get("eval"):
        e = results["eval"]
        lines.append(f"evaluation ({','.join(e['metrics'])}, {e['num_samples']} samples): {e['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distgan.bench", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="a training config (default: configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--steps", type=int, default=20, help="timed generator steps per mode")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--modes", default="local,plain,ray1",
                   help="comma-separated: local, plain, ray1, rayN, local_beside_ray, eval")
    p.add_argument("--repeats", type=int, default=2,
                   help="rounds over the modes (in turn, so that load changes hit all alike); the best round counts")
    p.add_argument("--batch-sweep", metavar="B1,B2,...", help="per-worker batches to time in local mode, with and "
                                                                 "without the CUDA graph (instead of --modes)")
    p.add_argument("--json", type=Path)
    args = p.parse_intermixed_args(argv)  # options and key=value in any order
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        raise UserError("--steps and --repeats must be >= 1, --warmup >= 0")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    known = ("local", "plain", "ray1", "rayN", "local_beside_ray", "eval")
    unknown = set(modes) - set(known)
    if unknown or not modes:
        raise UserError(f"--modes: unknown {sorted(unknown)} ({', '.join(known)})" if unknown else
                        f"--modes: none given ({', '.join(known)})")
    if args.json:  # before the timing, not after it
        ensure_writable_file(args.json, "--json")
    config = args.config or str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    cfg = load_config(config, ["run.mode=local", *args.overrides])
    if set(modes) - {"plain"}:  # the plain loop reads no data: its images are made in memory
        resolve_shards(cfg)
    if cfg.speed.keep_host_memory:  # now, not at the first distgan mode: the plain loop gets the same allocator
        keep_freed_host_memory()
    device = pick_device(cfg)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    m, t = cfg.model, cfg.train
    speed = Speed(cfg.speed, device)  # what the switches resolve to on this device (auto included)
    results: dict[str, Any] = {
        "device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        "config_summary": f"{m.image_size} px, width {m.width}, batch {t.batch_size}, n_critic {t.n_critic}, "
                          f"{'bf16' if speed.bf16 else 'fp32'}, channels_last {speed.channels_last}, "
                          f"gemm_first_conv {speed.gemm_first_conv}, compile {speed.compile}, "
                          f"cuda_graph {speed.cuda_graph}, fused_activations {speed.fused_activations}, "
                          f"gp_every {t.gp_every}",
        "config": to_dict(cfg), "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "modes": modes}
    timed = {
        "local": lambda: measure_local(cfg, device, args.steps, args.warmup),
        "plain": lambda: measure_plain(cfg, device, args.steps, args.warmup),
        "ray1": lambda: measure_ray(cfg, 1, args.steps, args.warmup),
        "rayN": lambda: measure_ray(cfg, cfg.ray.num_workers, args.steps, args.warmup),
        "local_beside_ray": lambda: measure_local_beside_ray(cfg, device, args.steps, args.warmup),
    }
    if args.batch_sweep:
        from distgan.bench.sweep import batch_sweep, sweep_report

        try:
            batches = [int(b) for b in args.batch_sweep.split(",") if b.strip()]
        except ValueError:
            raise UserError(f"--batch-sweep: comma-separated batch sizes, got {args.batch_sweep!r}") from None
        if not batches or min(batches) < 1:
            raise UserError(f"--batch-sweep: batch sizes >= 1, got {args.batch_sweep!r}")
        results["batch_sweep"] = batch_sweep(cfg, device, batches, args.steps, args.warmup, measure_local)
        print(sweep_report(results["batch_sweep"]))
        modes = []
    for round_ in range(args.repeats):
        for mode in [m for m in modes if m in timed]:
            print(f"timing {mode} (round {round_ + 1} of {args.repeats}) ...", flush=True)
            result = timed[mode]()
            result["rounds"] = [*results.get(mode, {}).get("rounds", []), result["steps_per_s"]]
            if mode not in results or result["steps_per_s"] > results[mode]["steps_per_s"]:
                results[mode] = result
            results[mode]["rounds"] = result["rounds"]
    if "eval" in modes:
        results["eval"] = measure_eval(cfg, device)
    print(report(results, cfg))
    if args.json:
        args.json.expanduser().parent.mkdir(parents=True, exist_ok=True)
        args.json.expanduser().write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
