"""speed.keep_host_memory: the training step stops page-faulting its buffers in again every step
(distgan/engine/host_memory.py). Each setting runs in a fresh process, since mallopt cannot be undone."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

# Train steps at the demo config's sizes (32 px, width 16, batch 64), on in-memory batches, in the main thread and
# in a second thread (Ray Train runs the loop in one, and threads allocate from their own malloc arenas).
SCRIPT = """
import json, resource, sys, threading
import torch
from distgan.config import load_config
from distgan.engine.distributed import Dist
from distgan.engine.state import TrainState
from distgan.engine.step import train_step

torch.set_num_threads(1)
cfg = load_config(None, ["model.image_size=32", "model.width=16", "train.batch_size=64", "train.n_critic=2",
                         "train.device=cpu", sys.argv[1]])
state = TrainState.create(cfg, torch.device("cpu"), Dist())
batch = torch.rand(64, 3, 32, 32) * 2 - 1
faults = {}

def faults_per_step(name):
    for _ in range(2):  # warm-up
        train_step(state, lambda: batch, cfg.train, Dist())
    counts = []
    for _ in range(7):  # the median step: a one-off fault elsewhere in the process is not the step's
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        train_step(state, lambda: batch, cfg.train, Dist())
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    faults[name] = sorted(counts)[3]

faults_per_step("main thread")
thread = threading.Thread(target=faults_per_step, args=("other thread",))
thread.start()
thread.join()
print(json.dumps({"faults": faults, "applied": state.speed.keep_host_memory}))
"""


def faults_per_step(keep: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, f"speed.keep_host_memory={str(keep).lower()}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc; other C libraries are left alone")
def test_keep_host_memory_stops_the_page_faults_of_every_step():
    kept, default = faults_per_step(True), faults_per_step(False)
    print(f"minor page faults per step: kept {kept['faults']}, glibc's default {default['faults']}")
    assert kept["applied"] and not default["applied"]
    for where in ("main thread", "other thread"):
        # measured, median step: 0 kept against thousands with glibc's default thresholds
        assert kept["faults"][where] * 20 < default["faults"][where], where
