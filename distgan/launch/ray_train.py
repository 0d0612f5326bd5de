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
from distgan.engine.run_folder import RunFolder

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
STOP_FILE = "STOP"  # written into the run directory by the driver on SIGTERM or Ctrl-C
JOB_MARKER = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for the entrypoint of a `ray job submit` job


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
    return root if "://" in root else str(Path(root).expanduser().absolute())


def describe_worker(folder: RunFolder, rank: int) -> None:
    """workers/rank-N.json in the run folder: where each rank runs (node, pid), for operators and the fault test."""
    import json
    import socket

    import ray

    info = {"rank": rank, "pid": os.getpid(), "hostname": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id()}
    folder.write_text(f"workers/rank-{rank}.json", json.dumps(info))


def worker_main(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker. TorchTrainer has already joined the process group."""
    import ray.train
    import ray.train.torch

    from distgan.engine.loop import train

    # Ray Train already routes the root logger (and print) to the driver: a handler of ours would double every line
    logging.getLogger("distgan").setLevel(logging.INFO)
    cfg = from_dict(config["config"])
    dist = Dist.from_process_group()
    assert dist.world_size == cfg.ray.num_workers, (dist.world_size, cfg.ray.num_workers)
    device = ray.train.torch.get_device() if cfg.ray.use_gpu else torch.device("cpu")
    folder = RunFolder(run_dir_of(cfg))  # TensorBoard and samples: in place, or staged and copied to s3:// etc.
    describe_worker(folder, dist.rank)

    def stop_check() -> bool:
        """The driver's SIGTERM/Ctrl-C, via the stop file. Rank 0 looks (the loop shares the answer); a storage
        hiccup here must not kill a worker."""
        if not dist.is_main:
            return False
        try:
            return folder.exists(STOP_FILE)
        except Exception as exc:
            log.warning("could not check %s: %s", STOP_FILE, exc)
            return False

    def preempt_check() -> bool:
        return ray.train.get_preemption_info() is not None  # a barrier: the loop calls it on every rank alike

    try:
        train(cfg, folder.local, dist=dist, store=RayCheckpoints(dist), device=device, stop_check=stop_check,
              preempt_check=preempt_check, publish=folder.sync_soon)
    finally:
        folder.close()


def check_fits(per_worker: dict[str, float], workers: int, available: dict[str, float]) -> None:
    """A local cluster never grows: a run it cannot hold would wait for resources forever, so refuse it."""
    from distgan.cli import UserError

    for name, amount in per_worker.items():
        if amount * workers > available.get(name, 0):
            key = "ray.cpus_per_worker" if name == "CPU" else "ray.use_gpu"
            raise UserError(f"ray.num_workers={workers} x {key} needs {amount * workers:g} {name}, this machine's "
                            f"local Ray cluster has {available.get(name, 0):g} (lower them, or give ray.address)")


def with_absolute_paths(cfg: Config) -> Config:
    """Relative paths mean the driver's working directory; Ray workers run in folders of their own."""
    cfg = from_dict(to_dict(cfg))
    cfg.run.root = storage_path(cfg)
    source = cfg.data.source
    if source != "demo" and "://" not in source and not source.startswith("pipe:"):
        cfg.data.source = str(Path(source).expanduser().absolute())
    return cfg


def run_ray(cfg: Config) -> str:
    """The driver: join (or start) a cluster, fit a TorchTrainer, return the run directory."""
    if os.environ.get(JOB_MARKER) and "://" not in cfg.run.root and not Path(cfg.run.root).expanduser().is_absolute():
        from distgan.cli import UserError

        raise UserError(f"run.root={cfg.run.root} is relative, and a `ray job submit` job runs in Ray's temporary "
                        f"copy of the working directory: give a shared absolute path or a URL (s3://, gs://)")
    cfg = with_absolute_paths(cfg)
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    folder = RunFolder(run_dir_of(cfg))
    try:  # storage every worker must write to: find out now, in one line, rather than from N tracebacks
        folder.remove(STOP_FILE)
        folder.write_text(".distgan", "run folder\n")
    except Exception as exc:
        from distgan.cli import UserError
        from distgan.data.sources import first_line

        raise UserError(f"run.root: cannot write to {folder.location}: {first_line(exc)}") from None
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = 1

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=True)
        else:  # a private local cluster, listening on loopback only; the dashboard serves Ray Train's state API
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1",
                     log_to_driver=True)
            check_fits(resources, cfg.ray.num_workers, ray.cluster_resources())
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

    def on_stop_signal(signum, frame):  # SIGTERM (preemption, `ray job stop`) or Ctrl-C: a final checkpoint
        name = signal.Signals(signum).name
        log.warning("%s: asking the workers to checkpoint and stop (at the next log step)", name)
        folder.write_text(STOP_FILE, f"{name}\n")
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {sig: signal.signal(sig, on_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        result = trainer.fit()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if result.error:
        raise result.error
    log.info("finished: %s", result.metrics)
    return folder.location
