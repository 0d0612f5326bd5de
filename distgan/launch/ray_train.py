"""Ray mode: a TorchTrainer runs the training loop in N workers; Ray Train owns processes, storage and restarts.

Ray's part is exactly this file: the worker function hands the loop a process group (set up by TorchTrainer),
a device, a checkpoint store backed by ray.train.report / get_checkpoint, and a stop check that listens for
preemption notices and for the stop file the driver writes on SIGTERM.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from distgan.config import Config, from_dict, to_dict
from distgan.engine.checkpoint import check_payload, write_atomic
from distgan.engine.distributed import Dist
from distgan.engine.health import Diverged
from distgan.engine.run_folder import RunFolder
from distgan.launch.ray_output import quiet_driver_output, quiet_worker_logging
from distgan.errors import StorageError, UserError, first_line

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
STOP_FILE = "STOP"  # written into the run directory by the driver on SIGTERM or Ctrl-C
JOB_MARKER = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for the entrypoint of a `ray job submit` job


class RayCheckpoints:
    """Ray Train's checkpoints: run_dir/checkpoint_<step>/checkpoint.pt, registered by ray.train.report.

    Every rank calls save (ray.train.report is collective); rank 0 attaches the payload. load_latest() starts at
    the checkpoint Ray hands a (re)started worker group, or at the one this attempt saved last (a rollback), and
    falls back to older checkpoint folders of the run when that one cannot be read.
    """

    def __init__(self, dist: Dist, folder: RunFolder):
        self.dist, self.folder = dist, folder
        self.last_saved: Optional[int] = None

    def candidates(self) -> list[int]:
        """Steps to try, newest first: never past the newest checkpoint Ray registered (or this attempt saved)."""
        import ray.train

        newest = self.last_saved
        if newest is None:
            checkpoint = ray.train.get_checkpoint()
            if checkpoint is None:
                return []
            newest = checkpoint_step(Path(checkpoint.path).name)
        found = {checkpoint_step(p.rsplit("/", 2)[-2]) for p in self.folder.glob(f"checkpoint_*/{CHECKPOINT_FILE}")}
        return sorted({s for s in found if s is not None and s <= newest} | {newest}, reverse=True)

    def load_latest(self) -> Optional[dict[str, Any]]:
        tried = self.candidates()
        for step in tried:
            name = f"{checkpoint_dir(step)}/{CHECKPOINT_FILE}"
            location = f"{self.folder.location.rstrip('/')}/{name}"
            try:
                payload = torch.load(io.BytesIO(self.folder.read_bytes(name)), map_location="cpu", weights_only=False)
                check_payload(payload)
                return payload
            except Exception as exc:
                log.warning("checkpoint %s cannot be read (%s): trying the one before", location, first_line(exc))
        if tried:
            raise StorageError(f"none of the {len(tried)} checkpoints in {self.folder.location} can be read")
        return None

    def save(self, step: int, payload: dict[str, Any], metrics: dict[str, float]) -> None:
        import ray.train

        report = {"step": step, **metrics}
        if not self.dist.is_main:
            ray.train.report(report)
        else:
            with tempfile.TemporaryDirectory() as folder:
                write_atomic(Path(folder) / CHECKPOINT_FILE, payload)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
                ray.train.report(report, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir(step))
        self.last_saved = step

    def save_best(self, step: int, payload: dict[str, Any]) -> None:
        """best/checkpoint.pt in the run folder, beside Ray Train's own (which keeps only the newest)."""
        if self.dist.is_main:
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            self.folder.write_bytes(f"best/{CHECKPOINT_FILE}", buffer.getvalue())


def checkpoint_dir(step: int) -> str:
    return f"checkpoint_{step:08d}"


def checkpoint_step(name: str) -> Optional[int]:
    head, _, number = name.partition("_")
    return int(number) if head == "checkpoint" and number.isdigit() else None


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


class RayLauncher:
    """The launcher contract (engine/launcher.py) inside a Ray Train worker: the process group TorchTrainer set
    up, Ray's device, Ray's checkpoints, the driver's stop file, Ray's preemption notices, and a run folder that
    may be on object storage (TensorBoard and samples are staged locally and copied up by publish)."""

    def __init__(self, cfg: Config):
        import ray.train.torch

        self.dist = Dist.from_process_group()
        self.device = ray.train.torch.get_device() if cfg.ray.use_gpu else torch.device("cpu")
        self.folder = RunFolder(run_dir_of(cfg))
        self.run_dir = self.folder.local
        self.checkpoints = RayCheckpoints(self.dist, self.folder)

    def should_stop(self) -> bool:
        """The driver's SIGTERM/Ctrl-C, via the stop file. Rank 0 looks (the loop shares the answer); a storage
        hiccup here must not kill a worker."""
        if not self.dist.is_main:
            return False
        try:
            return self.folder.exists(STOP_FILE)
        except Exception as exc:
            log.warning("could not check %s: %s", STOP_FILE, exc)
            return False

    def preempted(self) -> bool:
        import ray.train

        return ray.train.get_preemption_info() is not None  # a barrier: the loop calls it on every rank alike

    def publish(self) -> None:
        self.folder.sync_soon()

    def report(self, step: int, metrics: dict[str, float]) -> None:
        import ray.train

        ray.train.report({"step": step, **metrics})


def worker_main(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker. TorchTrainer has already joined the process group."""
    from distgan.engine.loop import train

    # Ray Train already routes the root logger (and print) to the driver: a handler of ours would double every line
    logging.getLogger("distgan").setLevel(logging.INFO)
    cfg = from_dict(config["config"])
    quiet_worker_logging(cfg.ray.log_level)
    launcher = RayLauncher(cfg)
    assert launcher.dist.world_size == cfg.ray.num_workers, (launcher.dist.world_size, cfg.ray.num_workers)
    describe_worker(launcher.folder, launcher.dist.rank)
    try:
        train(cfg, launcher)
    finally:
        launcher.folder.close()


def check_fits(per_worker: dict[str, float], workers: int, available: dict[str, float]) -> None:
    """A local cluster never grows: a run it cannot hold would wait for resources forever, so refuse it."""
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


def run_ray(cfg: Config) -> tuple[str, dict[str, Any]]:
    """The driver: join (or start) a cluster, fit a TorchTrainer; returns the run directory and the last
    reported metrics."""
    if os.environ.get(JOB_MARKER) and "://" not in cfg.run.root and not Path(cfg.run.root).expanduser().is_absolute():
        raise UserError(f"run.root={cfg.run.root} is relative, and a `ray job submit` job runs in Ray's temporary "
                        f"copy of the working directory: give a shared absolute path or a URL (s3://, gs://)")
    cfg = with_absolute_paths(cfg)
    import ray
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    folder = RunFolder(run_dir_of(cfg))
    try:  # storage every worker must write to: find out now, in one line, rather than from N tracebacks
        folder.remove(STOP_FILE)
        folder.write_text(".distgan", "run folder\n")
    except Exception as exc:
        raise StorageError(f"run.root: cannot write to {folder.location}: {first_line(exc)}") from None
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = 1

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=True)
        else:  # a private local cluster ("local": never join one found running on this machine), listening on
            # loopback only; the dashboard serves Ray Train's state API
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True,
                     dashboard_host="127.0.0.1", log_to_driver=True)
            check_fits(resources, cfg.ray.num_workers, ray.cluster_resources())
    quiet_driver_output()
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
            # Ray Train's own INFO records (every report, worker-group start) stay in the session's log files
            logging_config=ray.train.LoggingConfig(log_level=cfg.ray.log_level),
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
        raise_worker_error(result.error)
    return folder.location, dict(result.metrics or {})


def raise_worker_error(error: BaseException) -> None:
    """A worker's Diverged or user error, raised again here as itself so the CLI prints its one line."""
    failures = getattr(error, "worker_failures", None) or {}
    for failure in failures.values():
        if isinstance(failure, (Diverged, UserError)):
            raise failure from None
    raise error
