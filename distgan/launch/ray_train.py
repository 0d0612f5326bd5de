"""Ray mode: a TorchTrainer runs the training loop in N workers; Ray Train owns processes, storage and restarts.

Ray's part is exactly this file: the worker function hands the loop a process group (set up by TorchTrainer),
a device, a checkpoint store backed by ray.train.report / get_checkpoint, and a stop check that listens for
preemption notices and for the stop file the driver writes on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from distgan.config import Config, from_dict, to_dict
from distgan.engine.distributed import Dist

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
STOP_FILE = "STOP"  # written into the run directory by the driver on SIGTERM


class RayCheckpoints:
    """Every rank calls save (ray.train.report is a barrier); rank 0 attaches the checkpoint."""

    def __init__(self, dist: Dist):
        self.dist = dist

    def latest(self) -> Optional[dict[str, Any]]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)

    def save(self, step: int, payload: dict[str, Any], metrics: dict[str, float]) -> None:
        import ray.train

        report = {"step": step, **metrics}
        if not self.dist.is_main:
            ray.train.report(report)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(payload, Path(folder) / CHECKPOINT_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(report, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{step:08d}")


def run_dir_of(cfg: Config) -> str:
    return os.path.join(storage_path(cfg), cfg.run.name)


def storage_path(cfg: Config) -> str:
    root = cfg.run.root
    return root if "://" in root else str(Path(root).expanduser().resolve())


def describe_worker(run_dir: Path, rank: int) -> None:
    """run_dir/workers/rank-N.json: where each rank runs (node, pid), for operators and the fault test."""
    import json
    import socket

    import ray

    folder = run_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    info = {"rank": rank, "pid": os.getpid(), "hostname": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id()}
    (folder / f"rank-{rank}.json").write_text(json.dumps(info))


def worker_main(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker. TorchTrainer has already joined the process group."""
    import ray.train
    import ray.train.torch

    from distgan.engine.loop import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = from_dict(config["config"])
    dist = Dist.from_process_group(cfg.train.sync_grads)
    assert dist.world_size == cfg.ray.num_workers, (dist.world_size, cfg.ray.num_workers)
    device = ray.train.torch.get_device() if cfg.ray.use_gpu else torch.device("cpu")
    run_dir = Path(run_dir_of(cfg))
    stop_file = run_dir / STOP_FILE
    describe_worker(run_dir, dist.rank)

    def stop_check() -> bool:
        # every rank calls get_preemption_info the same number of times: it is a barrier
        return ray.train.get_preemption_info() is not None or stop_file.exists()

    train(cfg, run_dir, dist=dist, store=RayCheckpoints(dist), device=device, stop_check=stop_check)


def run_ray(cfg: Config) -> str:
    """The driver: join (or start) a cluster, fit a TorchTrainer, return the run directory."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=True)
        else:  # a private local cluster, listening on loopback only
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=True)
    run_dir = Path(run_dir_of(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / STOP_FILE).unlink(missing_ok=True)
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        worker_main,
        train_loop_config={"config": to_dict(cfg)},
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.ray.placement_strategy,
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage_path(cfg),
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.log.keep_checkpoints),
        ),
    )

    def on_sigterm(signum, frame):  # preemption of the driver: ask the workers for a final checkpoint
        log.warning("SIGTERM: asking the workers to checkpoint and stop")
        (run_dir / STOP_FILE).touch()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        result = trainer.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if result.error:
        raise result.error
    log.info("finished: %s", result.metrics)
    return str(run_dir)
