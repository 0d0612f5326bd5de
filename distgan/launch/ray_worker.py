"""Ray mode, in each Ray Train worker: the launcher contract (engine/launcher.py) on Ray's terms, and the
one place that knows Ray Train's checkpoint folder layout."""

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
    """Ray Train's checkpoints, run_dir/checkpoint_<step>/checkpoint.pt: every rank saves (report is
    collective), rank 0 with the payload."""

    def __init__(self, dist: Dist, folder: RunFolder, start_from: str = "", keep: int = 3):
        """start_from: another run's checkpoint folder, used while this one has none (a restored or exploited trial)."""
        self.dist, self.folder, self.start_from, self.keep = dist, folder, start_from, keep
        self.last_saved: Optional[int] = None

    def candidates(self) -> list[int]:
        """Steps to try, newest first, unregistered folders included (docs/workarounds.md); after a rollback,
        none past the last save."""
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
        # rank 0's listing for all: a lagging one (NFS attribute cache) would take start_from, alone in the broadcast
        tried = self.dist.broadcast_object(self.candidates() if self.dist.is_main else None)
        if not tried and self.start_from:
            return self._read_start_from()
        # rank 0 picks, every rank loads that one (same step); a fatal error ends every rank alike
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
        """Prune folders Ray never registered to the newest `keep`, as Ray prunes those it did."""
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
        """best/checkpoint.pt, beside Ray Train's own (which it prunes)."""
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
    """workers/rank-N.json: each rank's node and pid, for operators and the fault test."""
    import ray

    info = {"rank": rank, "pid": os.getpid(), "hostname": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id()}
    folder.write_text(f"workers/rank-{rank}.json", json.dumps(info))


class RayLauncher:
    """The launcher contract in a Ray Train worker; TensorBoard and samples are staged locally, copied up by publish."""

    def __init__(self, cfg: Config, run_dir: str, train_run_dir: str, start_from: str = ""):
        """train_run_dir: Ray Train's checkpoints (run_dir, except in a Tune trial); start_from: see RayCheckpoints."""
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
        """The driver's stop file, looked for by rank 0; a storage hiccup never kills a worker."""
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
    """Every Ray Train worker's entry point; config: build_trainer's train_loop_config."""
    from distgan.engine.loop import train
    from distgan.evaluation.evaluator import evaluator_for

    # no handler of ours: Ray Train routes the root logger to the driver already (docs/workarounds.md)
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


