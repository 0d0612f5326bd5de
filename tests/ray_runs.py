"""Helpers for tests that run distgan in Ray mode on the session's cluster (tests/ray_cluster.py)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, TINY_MODEL
from ray_cluster import ENV


def overrides(root: Path | str, cache: str, name: str, *extra: str) -> list[str]:
    return [
        "--config", str(ROOT / "configs" / "demo.yaml"), "run.mode=ray", f"run.root={root}", f"run.name={name}",
        *TINY_MODEL, "data.demo_images=512", f"data.cache_dir={cache}",
        "data.shuffle_buffer=64", "train.batch_size=16", "train.n_critic=2", "train.device=cpu",
        "log.every=5", "log.sample_every=20", "log.checkpoint_every=10", "log.progress=false",
        "ray.num_workers=2", *extra,
    ]


def start_train(cluster, args, log_path: Path, cwd: Path = ROOT) -> subprocess.Popen:
    env = {**ENV, "RAY_ADDRESS": cluster.address}
    return subprocess.Popen([*cluster.prefix, sys.executable, "-m", "distgan.train", *args], cwd=cwd, env=env,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log_path: Path, timeout: float = 420, returncode: int = 0) -> str:
    proc.wait(timeout=timeout)
    text = log_path.read_text()
    assert proc.returncode == returncode, text[-4000:]
    return text


def checkpoints(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in run_dir.glob("checkpoint_*") if (p / "checkpoint.pt").exists())


def readable_checkpoints(run_dir: Path) -> list[int]:
    """Checkpoint folders whose file reads back whole (a folder can be seen while Ray is still copying into it)."""
    steps = []
    for step in checkpoints(run_dir):
        try:
            torch.load(run_dir / f"checkpoint_{step:08d}" / "checkpoint.pt", map_location="cpu", weights_only=False)
            steps.append(step)
        except Exception:
            pass
    return steps


def registered_checkpoints(run_dir: Path) -> list[int]:
    """Checkpoints Ray Train's controller has recorded (it collects the workers' reports every 2 s)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return []
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (json.JSONDecodeError, KeyError):  # being rewritten
        return []
    return sorted(int(r["checkpoint_dir_name"].split("_")[1]) for r in results)


def logged_steps(run_dir: Path, tag: str = "loss/critic") -> list[int]:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [e.step for e in acc.Scalars(tag)]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
