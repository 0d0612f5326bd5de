"""Ray mode, inside each Ray Train worker: the launcher contract (engine/launcher.py) on Ray's terms.

The worker hands the loop the process group TorchTrainer set up, Ray's device, Ray Train's checkpoints (this file
is the one place that knows their folder layout), the driver's stop file, Ray's preemption notices, and a run
folder that may be on object storage.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from distgan.config import Config, from_dict
from distgan.engine.checkpoint import CHECKPOINT_FILE, decode_payload, read_newest, write_atomic
from distgan.engine.distributed import Dist
from distgan.io.run_folder import RunFolder
from distgan.errors import StorageError, StorageUnreachable, UnsafeFile, first_line
from distgan.launch.ray_output import quiet_worker_logging

log = logging.getLogger(__name__)

STOP_FILE = "STOP"  # written into the run directory by the driver on SIGTERM or Ctrl-C
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it registered


class RayCheckpoints:
    """Ray Train's checkpoints: run_dir/checkpoint_<step>/checkpoint.pt, registered by ray.train.report.

    Every rank calls save (ray.train.report is collective); rank 0 attaches the payload. load_latest() takes the
    newest checkpoint folder of the run that reads back whole (see candidates), and falls back to older ones.
    """

    def __init__(self, dist: Dist, folder: RunFolder, start_from: str = "", keep: int = 3):
        """folder: the Train run's own folder (storage_path/name). start_from: a checkpoint folder of another Train
        run to start from when this one has none yet (a Tune trial restored or exploited by PBT). keep:
        log.keep_checkpoints, which Ray applies to the checkpoints it registered and prune_unregistered to the rest."""
        self.dist, self.folder, self.start_from, self.keep = dist, folder, start_from, keep
        self.last_saved: Optional[int] = None

    def candidates(self) -> list[int]:
        """Steps to try, newest first: every checkpoint folder of the run, and the one Ray hands a restarted worker
        group. A folder Ray has not registered yet counts too: ray.train.report writes it before the controller
        collects the report (it polls every 2 s), so a node lost in between would otherwise cost a checkpoint
        interval, or the whole run when it was the first. Loading verifies each candidate (load_latest). After a
        rollback nothing past the checkpoint this attempt saved last is taken."""
        import ray.train

        found = {checkpoint_step(p.rsplit("/", 2)[-2]) for p in self.folder.glob(f"checkpoint_*/{CHECKPOINT_FILE}")}
        found.discard(None)
        if self.last_saved is not None:
            return sorted({s for s in found if s <= self.last_saved} | {self.last_saved}, reverse=True)
        registered = ray.train.get_checkpoint()
        if registered is not None:
            found.add(checkpoint_step(Path(registered.path).name))
        return sorted(found, reverse=True)

    def load_latest(self) -> Optional[dict[str, Any]]:
        # rank 0's listing for every rank: a rank whose listing lagged (a shared file system's attribute cache) would
        # otherwise take the start_from branch below and leave rank 0 alone in the broadcast
        tried = self.dist.broadcast_object(self.candidates() if self.dist.is_main else None)
        if not tried and self.start_from:
            return self._read_start_from()
        # rank 0 picks the newest readable checkpoint and every rank loads that one: a storage hiccup on one rank
        # must not put the ranks on different steps. Storage that stays away or a file that holds code ends the run
        # on every rank alike (never an older checkpoint, never a rank left waiting in the broadcast).
        outcome, payload = None, None
        if self.dist.is_main:
            try:
                outcome, payload = read_newest([(step, self._location(step), lambda step=step: self._bytes(step))
                                                for step in tried])
            except (StorageUnreachable, UnsafeFile) as exc:
                outcome = (type(exc).__name__, str(exc))
        if self.dist.is_main and isinstance(outcome, int):
            self.prune_unregistered(tried, outcome)
        outcome = self.dist.broadcast_object(outcome)
        if isinstance(outcome, tuple):
            raise {"StorageUnreachable": StorageUnreachable, "UnsafeFile": UnsafeFile}[outcome[0]](outcome[1])
        if outcome is None:
            if tried:
                raise StorageError(f"none of the {len(tried)} checkpoints in {self.folder.location} can be read")
            return None
        if payload is None:
            try:
                payload = decode_payload(self._bytes(outcome), self._location(outcome))
            except (StorageUnreachable, UnsafeFile):
                raise
            except Exception as exc:
                raise StorageError(f"rank {self.dist.rank} cannot read {self._location(outcome)}, which rank 0 "
                                   f"read: {first_line(exc)}") from None
        return payload

    def prune_unregistered(self, steps: list[int], chosen: int) -> None:
        """Checkpoint folders Ray never registered (written by an attempt lost before Ray's controller collected
        its report) are kept like the others: the newest `keep`. Ray deletes only those it registered."""
        try:
            snapshot = json.loads(self.folder.read_text(SNAPSHOT)) if self.folder.exists(SNAPSHOT) else {}
            registered = {checkpoint_step(r.get("checkpoint_dir_name", "")) for r in
                          snapshot.get("checkpoint_results", [])}
        except Exception as exc:  # a record being rewritten: the next start prunes
            log.warning("could not read %s (%s): no checkpoint folders pruned", SNAPSHOT, first_line(exc))
            return
        for step in sorted(steps, reverse=True)[self.keep:]:
            if step not in registered and step != chosen:
                log.info("removing %s: a checkpoint Ray never registered, older than the newest %d", checkpoint_dir(step),
                         self.keep)
                self.folder.remove_tree(checkpoint_dir(step))

    def _read_start_from(self) -> dict[str, Any]:
        location = f"{self.start_from.rstrip('/')}/{CHECKPOINT_FILE}"
        try:
            data = RunFolder(self.start_from, self.folder.timeout_s).read_bytes(CHECKPOINT_FILE)
            return decode_payload(data, location)
        except (StorageUnreachable, UnsafeFile):
            raise
        except Exception as exc:
            raise StorageError(f"cannot start from {location}: {first_line(exc)}") from None

    def _location(self, step: int) -> str:
        return f"{self.folder.location.rstrip('/')}/{checkpoint_dir(step)}/{CHECKPOINT_FILE}"

    def _bytes(self, step: int) -> bytes:
        return self.folder.read_bytes(f"{checkpoint_dir(step)}/{CHECKPOINT_FILE}")  # retried through outages

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
        """best/checkpoint.pt in the run folder, beside Ray Train's own (it keeps the newest log.keep_checkpoints)."""
        if self.dist.is_main:
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            self.folder.write_bytes(f"best/{CHECKPOINT_FILE}", buffer.getvalue())


def checkpoint_dir(step: int) -> str:
    return f"checkpoint_{step:08d}"


def checkpoint_step(name: str) -> Optional[int]:
    head, _, number = name.partition("_")
    return int(number) if head == "checkpoint" and number.isdigit() else None


def describe_worker(folder: RunFolder, rank: int) -> None:
    """workers/rank-N.json in the run folder: where each rank runs (node, pid), for operators and the fault test."""
    import ray

    info = {"rank": rank, "pid": os.getpid(), "hostname": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id()}
    folder.write_text(f"workers/rank-{rank}.json", json.dumps(info))


class RayLauncher:
    """The launcher contract (engine/launcher.py) inside a Ray Train worker: the process group TorchTrainer set
    up, Ray's device, Ray's checkpoints, the driver's stop file, Ray's preemption notices, and a run folder that
    may be on object storage (TensorBoard and samples are staged locally and copied up by publish)."""

    def __init__(self, cfg: Config, run_dir: str, train_run_dir: str, start_from: str = ""):
        """run_dir: run.root/run.name (TensorBoard, samples, exports); train_run_dir: where Ray Train keeps this
        run's checkpoints (the same folder, except in a Tune trial); start_from: see RayCheckpoints."""
        import ray.train.torch

        self.dist = Dist.from_process_group()
        self.device = ray.train.torch.get_device() if cfg.ray.use_gpu else torch.device("cpu")
        self.cpus = cfg.ray.cpus_per_worker
        timeout = cfg.run.storage_timeout_s
        self.folder = RunFolder(run_dir, timeout)
        self.run_dir = self.folder.local
        train_folder = self.folder if train_run_dir == run_dir else RunFolder(train_run_dir, timeout)
        self.checkpoints = RayCheckpoints(self.dist, train_folder, start_from, cfg.log.keep_checkpoints)
        # generator exports of earlier attempts are in the bucket, not in this process's staging folder
        self.folder.keep_newest("generators/generator-[0-9]*.pt", cfg.log.keep_checkpoints)

    def should_stop(self) -> bool:
        """The driver's SIGTERM/Ctrl-C, via the stop file. Rank 0 looks (the loop shares the answer); a storage
        hiccup here must not kill a worker."""
        if not self.dist.is_main:
            return False
        try:
            return self.folder.exists(STOP_FILE, wait=False)  # storage away: no stop file, train on
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
    """Runs in every Ray Train worker; TorchTrainer has already joined the process group. config: "config" (the
    training config), "run_dir", "train_run_dir", "start_from" (ray_train.build_trainer writes them)."""
    from distgan.engine.loop import train
    from distgan.evaluation.evaluator import evaluator_for

    # Ray Train already routes the root logger (and print) to the driver: a handler of ours would double every line
    logging.getLogger("distgan").setLevel(logging.INFO)
    cfg = from_dict(config["config"])
    quiet_worker_logging(cfg.ray.log_level)
    launcher = RayLauncher(cfg, config["run_dir"], config["train_run_dir"], config.get("start_from", ""))
    assert 1 <= launcher.dist.world_size <= cfg.ray.num_workers, (launcher.dist.world_size, cfg.ray.num_workers)
    describe_worker(launcher.folder, launcher.dist.rank)
    try:
        train(cfg, launcher, evaluator_for(cfg, launcher.dist, launcher.device))
    finally:
        launcher.folder.close()


