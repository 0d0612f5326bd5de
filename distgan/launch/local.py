"""run.mode=local: the loop in this process (one GPU or the CPU), no Ray."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Optional

import torch

from distgan.io.device import pick_device  # noqa: F401  (bench and tests take it from here too)
from distgan.config import Config, with_absolute_paths
from distgan.errors import ConfigError
from distgan.launch import checkpoint_layouts
from distgan.engine.checkpoint import FolderCheckpoints, refuse_another_modes_run
from distgan.engine.distributed import Dist
from distgan.engine.loop import train
from distgan.engine.state import TrainState
from distgan.evaluation.evaluator import evaluator_for

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints/ckpt-*.pt"  # this launcher's checkpoints in a run folder (FolderCheckpoints)


class LocalLauncher:
    """Inside it, SIGTERM and Ctrl-C ask the loop to stop with a checkpoint."""

    def __init__(self, cfg: Config, run_dir: Optional[str | Path] = None):
        self.dist = Dist()
        self.device = pick_device(cfg.train.device)
        self.cpus = float(len(os.sched_getaffinity(0)))
        self.run_dir = Path(run_dir) if run_dir is not None else Path(cfg.run.root) / cfg.run.name
        refuse_another_modes_run(str(self.run_dir), "local", checkpoint_layouts())
        self.checkpoints = FolderCheckpoints(self.run_dir / "checkpoints", cfg.log.keep_checkpoints,
                                             timeout_s=cfg.run.storage_timeout_s)
        self.stop_signal: Optional[int] = None  # the signal that asked the run to stop
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "LocalLauncher":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: no signal handling there
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        log.warning("%s: stopping at the next log step with a checkpoint", signal.Signals(signum).name)
        self.stop_signal = signum
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def should_stop(self) -> bool:
        return self.stop_signal is not None

    def preempted(self) -> bool:
        return False

    def publish(self) -> None:
        pass  # files are written in place

    def report(self, step: int, metrics: dict[str, float]) -> None:
        pass


def run_local(cfg: Config, run_dir: Optional[str | Path] = None) -> tuple[TrainState, Optional[int]]:
    """Train here (run_dir: default run.root/run.name): (state, stop signal or None)."""
    with LocalLauncher(cfg, run_dir) as launcher:
        evaluator = evaluator_for(cfg, launcher.dist, launcher.device)
        return train(cfg, launcher, evaluator), launcher.stop_signal


def train_local(cfg: Config, run_dir: Optional[str | Path] = None) -> TrainState:
    return run_local(cfg, run_dir)[0]


def check(cfg: Config) -> None:
    if "://" in cfg.run.root:
        raise ConfigError(f"run.root: {cfg.run.root} is a URL: run.mode=local writes to a local path (run.mode=ray "
                          f"takes URLs)")


def run(cfg: Config) -> tuple[str, Optional[int], dict, Optional[int]]:
    """distgan.train with run.mode=local: (run folder, step, best metrics, stop signal)."""
    from distgan.engine.loop import best_so_far
    from distgan.io.run_folder import ensure_writable

    cfg = with_absolute_paths(cfg)  # the config stored with checkpoints and exports means the same anywhere
    run_dir = ensure_writable(Path(cfg.run.root) / cfg.run.name, "run.root", keep=False)
    log.info("run directory: %s", run_dir.resolve())
    state, stop_signal = run_local(cfg, run_dir)
    return str(run_dir), state.step, best_so_far(state.best), stop_signal
