"""One Ray Tune trial: a driver that fits a TorchTrainer and reports to Tune with pointer checkpoints, so that
PBT can exploit and a restored search resume (docs/tune.md)."""

from __future__ import annotations

import hashlib
import json
import os
import queue as queue_lib
import shutil
import tempfile
import threading
from typing import Any, Optional

from distgan.config import from_dict
from distgan.io.run_folder import RunFolder
from distgan.launch.ray_train import build_trainer, fit
from distgan.launch.search import apply_params

POINTER = "train_checkpoint.json"


def make_bridge(q, metric: str):
    from ray.train import UserCallback

    class CheckpointBridge(UserCallback):
        """Reports with the search's metric go to the trial driver, with their checkpoint's path."""

        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metric in metrics[0]:
                q.put((dict(metrics[0]), checkpoint.path if checkpoint is not None else None))

    return CheckpointBridge()


def report_with_pointer(metrics: dict[str, Any], path: Optional[str]) -> None:
    """ray.tune.report with a one-file checkpoint naming the Train checkpoint folder."""
    import ray.tune

    if path is None:
        ray.tune.report(metrics)
        return
    folder = tempfile.mkdtemp(prefix="distgan-pointer-")
    try:
        with open(os.path.join(folder, POINTER), "w") as f:
            json.dump({"path": path, "step": int(metrics["step"])}, f)
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_pointer(checkpoint) -> str:
    with checkpoint.as_directory() as folder:
        with open(os.path.join(folder, POINTER)) as f:
            return json.load(f)["path"]


def note_start(cfg, trial: str, start_from: str, params: dict[str, Any]) -> None:
    """Append this restart to trials/<trial>/starts.jsonl: from where, with which values, exploit or not."""
    donor_run = start_from.rstrip("/").rsplit("/", 2)[-2]
    record = {"trial": trial, "from": start_from, "step": int(start_from.rstrip("/").rsplit("_", 1)[-1]),
              "exploit": not donor_run.startswith(trial), "config": params}
    folder = RunFolder(f"{cfg.run.root}/{cfg.run.name}")
    name = "starts.jsonl"
    previous = folder.read_text(name) if folder.exists(name) else ""
    folder.write_text(name, previous + json.dumps(record) + "\n")


def trial_driver(config: dict[str, Any], base: dict[str, Any], search: dict[str, Any]) -> None:
    """The Tune trainable: the trial's searched values (config) applied to base; search: its dir and metric."""
    import ray.tune
    from ray.util.queue import Empty, Queue

    cfg = apply_params(from_dict(base), dict(config))
    trial = ray.tune.get_context().get_trial_id()
    cfg.run.root, cfg.run.name = f"{search['dir']}/trials", trial  # TensorBoard, samples, exports: stable per trial
    start_from = ""
    restored = ray.tune.get_checkpoint()
    if restored is not None:
        start_from = read_pointer(restored)
        note_start(cfg, trial, start_from, params=dict(config))
    # a new Train run per start: under the same name Train V2 would resume the trial's previous run
    train_name = trial + (f"-from-{hashlib.sha1(start_from.encode()).hexdigest()[:10]}" if start_from else "")
    q = Queue(actor_options={"num_cpus": 0})
    trainer = build_trainer(cfg, train_name, f"{search['dir']}/train", start_from, [make_bridge(q, search["metric"])])
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fit(trainer)
        except BaseException as exc:  # reported from the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="trainer-fit", daemon=True)
    thread.start()
    reported = 0
    while thread.is_alive() or not q.empty():
        try:
            metrics, path = q.get(timeout=1.0)
        except (Empty, queue_lib.Empty):
            continue
        report_with_pointer(metrics, path)
        reported += 1
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    if not reported:  # Tune would end the whole search on a final result without the metric: end this trial only
        raise RuntimeError(f"trial {trial}: its training run ended without reporting {search['metric']}")
