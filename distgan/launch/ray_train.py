"""Ray mode, the driver: join or start a cluster and fit a TorchTrainer whose workers run the loop."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any, Optional, Sequence

from distgan.config import Config, to_dict, with_absolute_paths
from distgan.engine.checkpoint import CHECKPOINT_FILE, refuse_another_modes_run
from distgan.launch import checkpoint_layouts
from distgan.io.run_folder import RunFolder
from distgan.errors import (ConfigError, DataSourceError, Diverged, StorageError, StorageUnreachable, UnusableData,
                            UserError,
                            first_line, first_sentence)
from distgan.io.retrying_arrow_fs import retrying_filesystem
from distgan.launch.cluster_token import secure_local_cluster
from distgan.launch.ray_output import quiet_driver_output
from distgan.launch.ray_worker import STOP_FILE, worker_main

log = logging.getLogger(__name__)

JOB_MARKER = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for the entrypoint of a `ray job submit` job
CHECKPOINTS = f"checkpoint_*/{CHECKPOINT_FILE}"  # Ray Train's checkpoint folders in a run folder (ray_worker.py)


def run_dir_of(cfg: Config) -> str:
    return os.path.join(storage_path(cfg), cfg.run.name)


def storage_path(cfg: Config) -> str:
    root = cfg.run.root
    return root if "://" in root else str(Path(root).expanduser().absolute())


def check_fits(per_worker: dict[str, float], workers: int, available: dict[str, float], extra: str = "") -> None:
    """Refuse a run the local cluster cannot hold: it never grows, so the run would wait forever."""
    for name, amount in per_worker.items():
        if amount * workers > available.get(name, 0):
            key = "ray.cpus_per_worker" if name == "CPU" else "ray.use_gpu"
            raise UserError(f"ray.num_workers={workers} x {key} needs {amount * workers:g} {name}{extra}, this "
                            f"machine's local Ray cluster has {available.get(name, 0):g} (lower them, or give "
                            f"ray.address)")


def worker_resources(cfg: Config) -> dict[str, float]:
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = 1
    return resources


def worker_range(cfg: Config) -> int | tuple[int, int]:
    """A fixed worker count, or (min, max) for an elastic run."""
    r = cfg.ray
    return r.num_workers if r.min_workers is None else (r.min_workers, r.num_workers)


def fewest_workers(cfg: Config) -> int:
    return cfg.ray.num_workers if cfg.ray.min_workers is None else cfg.ray.min_workers


def connect(cfg: Config) -> bool:
    """Join the cluster ray.address or RAY_ADDRESS names, or start a private local one (then True)."""
    import ray

    started = False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address:
            source = "ray.address" if cfg.ray.address else "RAY_ADDRESS"
            check_reachable(address, source)
            try:
                ray.init(address=address, log_to_driver=True)
            except ValueError as exc:  # e.g. the dashboard's http:// address, which `ray job submit` takes
                hint = (": give the cluster's GCS address (HEAD:6379), or unset it on a Ray node (a `ray job "
                        "submit` job finds its cluster itself)") if "://" in address else f": {first_sentence(exc)}"
                raise UserError(f"{source}={address} is not a Ray cluster address{hint}") from None
        else:  # a private local cluster (never one found running), token auth, dashboard on 127.0.0.1
            print(secure_local_cluster())
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True,
                     dashboard_host="127.0.0.1", log_to_driver=True)
            started = True
    quiet_driver_output()
    return started


def check_reachable(address: str, source: str, timeout_s: float = 10.0) -> None:
    """A HOST:PORT nobody listens on: one line now, not minutes of ray.init retries."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():  # auto, ray://, a URL: Ray's own checks
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"{source}={address}: no Ray cluster answers there ({first_line(exc)})") from None


def refuse_relative_root_in_job(cfg: Config) -> None:
    if os.environ.get(JOB_MARKER) and "://" not in cfg.run.root and not Path(cfg.run.root).expanduser().is_absolute():
        raise UserError(f"run.root={cfg.run.root} is relative, and a `ray job submit` job runs in Ray's temporary "
                        f"copy of the working directory: give a shared absolute path or a URL (s3://, gs://)")


def check_resumed_model(cfg: Config) -> None:
    """A run resumed with another model: one line from the driver, not a traceback per worker."""
    from distgan.engine.checkpoint import check_same_model, load_newest_generator

    try:
        _, facts, _ = load_newest_generator(run_dir_of(cfg))  # an unreadable newest export: the one before it
    except UserError:  # no run folder, no export yet, none readable: the workers decide
        return
    check_same_model({"config": {"model": facts["config"]["model"]}, "step": facts["step"]}, cfg)


def check_storage(cfg: Config) -> RunFolder:
    """The run folder all workers write to: unwritable is one line now, not N tracebacks."""
    folder = RunFolder(run_dir_of(cfg), cfg.run.storage_timeout_s)
    try:
        folder.remove(STOP_FILE)
        folder.write_text(".distgan", "run folder\n")
    except StorageUnreachable:
        raise
    except Exception as exc:
        raise StorageError(f"run.root: cannot write to {folder.location}: {first_line(exc)}") from None
    return folder


def build_trainer(cfg: Config, train_name: Optional[str] = None, train_storage: Optional[str] = None,
                  start_from: str = "", callbacks: Sequence[Any] = ()):
    """A TorchTrainer running the loop; train_name/train_storage: Ray Train's run (default the run's);
    start_from: a checkpoint folder to start from."""
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    train_name = train_name or cfg.run.name
    train_storage = train_storage or storage_path(cfg)
    storage_fs, storage_fs_path = None, train_storage
    if "://" in train_storage:  # object storage: Ray Train's own calls ride out an outage too
        storage_fs, storage_fs_path = retrying_filesystem(train_storage, cfg.run.storage_timeout_s)
    loop_config = {"config": to_dict(cfg), "run_dir": run_dir_of(cfg),
                   "train_run_dir": f"{train_storage.rstrip('/')}/{train_name}", "start_from": start_from}
    return TorchTrainer(
        worker_main,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=worker_range(cfg),
            use_gpu=cfg.ray.use_gpu,
            resources_per_worker=worker_resources(cfg),
            placement_strategy=cfg.ray.placement_strategy,
            elastic_resize_monitor_interval_s=cfg.ray.resize_check_s,
        ),
        run_config=RunConfig(
            name=train_name,
            storage_path=storage_fs_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.log.keep_checkpoints),
            # Ray Train's own INFO records (every report, worker-group start) stay in the session's log files
            logging_config=ray.train.LoggingConfig(log_level=cfg.ray.log_level),
            callbacks=[no_retry_for_repeating_errors(), *callbacks],
        ),
    )


def run_ray(cfg: Config) -> tuple[str, dict[str, Any], Optional[int]]:
    """Fit one TorchTrainer: (run folder, last metrics, stop signal or None)."""
    import ray

    refuse_relative_root_in_job(cfg)
    cfg = with_absolute_paths(cfg)
    refuse_another_modes_run(run_dir_of(cfg), "ray", checkpoint_layouts())
    check_resumed_model(cfg)
    if connect(cfg):
        check_fits(worker_resources(cfg), fewest_workers(cfg), ray.cluster_resources())
        if cfg.ray.placement_strategy == "STRICT_SPREAD" and fewest_workers(cfg) > 1:  # one node: never placed
            raise UserError(f"ray.placement_strategy=STRICT_SPREAD puts each of the {fewest_workers(cfg)} workers on "
                            f"a node of its own, and this machine's local Ray cluster is one node (use PACK or SPREAD, "
                            f"or give ray.address)")
    folder = check_storage(cfg)  # after the checks that refuse a run: a refused run leaves no folder behind
    stop_signals: list[int] = []

    def on_stop_signal(signum, frame):  # SIGTERM (preemption, `ray job stop`) or Ctrl-C: a final checkpoint
        stop_signals.append(signum)
        name = signal.Signals(signum).name
        log.warning("%s: asking the workers to checkpoint and stop (at the next log step)", name)
        folder.write_text(STOP_FILE, f"{name}\n")
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    # at once, not after build_trainer (seconds of imports): a stop from now on gets its checkpoint
    previous = {sig: signal.signal(sig, on_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        trainer = build_trainer(cfg)
        # keep distgan's Ctrl-C handler (checkpoint, then stop) over Train V2's (docs/workarounds.md)
        trainer._register_sigint_handler = lambda controller: None
        result = fit(trainer)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return folder.location, dict(result.metrics or {}), stop_signals[0] if stop_signals else None


def check(cfg: Config) -> None:
    t = cfg.train
    if t.device != "auto" and (t.device == "cuda") != cfg.ray.use_gpu:
        raise ConfigError(f"train.device: train.device={t.device} contradicts ray.use_gpu={str(cfg.ray.use_gpu).lower()}"
                        f" (Ray mode: set ray.use_gpu)")


def run(cfg: Config) -> tuple[str, Optional[int], dict, Optional[int]]:
    """distgan.train with run.mode=ray: (run folder, step, last metrics, stop signal)."""
    from distgan.data.sources import resolve_shards

    resolve_shards(cfg)  # a wrong data.source is a one-line error here, not a traceback from every worker
    run_dir, metrics, stop_signal = run_ray(cfg)
    return run_dir, int(metrics["step"]) if "step" in metrics else None, metrics, stop_signal  # None: no report


def fit(trainer):
    """trainer.fit(), re-raising a worker's Diverged or user error unwrapped, for its one line."""
    import ray.train

    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise_worker_error(exc)
    if result.error:
        raise_worker_error(result.error)
    return result


def repeats_on_retry(error: BaseException) -> Optional[BaseException]:
    """The worker's exception if a retry would raise it again (divergence, user mistake, storage past its
    timeout, unusable data), else None."""
    cause = getattr(error, "cause", None) or error  # a RayTaskError carries the original as .cause
    if isinstance(cause, (Diverged, StorageUnreachable, UnusableData)) or (
            isinstance(cause, UserError) and not isinstance(cause, (StorageError, DataSourceError))):
        return cause
    return None


def no_retry_for_repeating_errors():
    """A controller callback that ends the run on an error a retry would repeat, which Train V2 would retry
    up to ray.max_failures (docs/workarounds.md)."""
    from ray.train import UserCallback

    class NoRetryForRepeatingErrors(UserCallback):
        def after_exception(self, run_context, worker_exceptions):
            for error in worker_exceptions.values():
                cause = repeats_on_retry(error)
                if cause is not None:
                    raise cause

    return NoRetryForRepeatingErrors()


def raise_worker_error(error: BaseException) -> None:
    failures = list((getattr(error, "worker_failures", None) or {}).values())
    if getattr(error, "controller_failure", None) is not None:  # ended by no_retry_for_repeating_errors
        failures.append(error.controller_failure)
    for failure in failures:
        cause = getattr(failure, "cause", None) or failure  # a RayTaskError carries the original as .cause
        if isinstance(cause, (Diverged, UserError)):
            raise type(cause)(str(cause).strip().splitlines()[0] if str(cause).strip() else "") from None
    raise error
