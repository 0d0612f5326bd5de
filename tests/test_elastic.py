"""Elastic training on the session's 2-node Ray cluster: a node is lost mid-run (all its processes killed by PID,
as when a spot machine is reclaimed), the run goes on with 1 worker from its last checkpoint, the node comes back,
and the run grows to 2 workers again; the global batch and the update rule stay as they are (tests/
test_equivalence.py shows that N uneven ranks equal one process, and that a change of world size resumes exactly).

The run is a `ray job submit` as docs/cluster.md section 7 shows it, with the job's runtime env shortening Ray
Train's wait for a worker group's placement group (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by default): right
after the loss the lost node still counts as alive, the first restart asks for 2 workers and waits that long
before it retries with 1.

It ends with `ray job stop`, as docs/cluster.md section 6 says to stop a job: SIGTERM to the driver, then SIGKILL
after RAY_JOB_STOP_WAIT_TIME_S (3 s by default). With the wait raised in the runtime env the run ends cleanly,
its newest registered checkpoint the one of the step it stopped at (with Ray's 3 s it is killed first). That the
stop itself writes the checkpoint, also off the schedule, tests/test_ray.py's Ctrl-C test shows.
"""

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT
from ray_cluster import RAY
from ray_runs import overrides, registered_checkpoints, wait_for

GROUP_START_TIMEOUT_S = 15


def world_sizes(run_dir: Path) -> list[tuple[int, int]]:
    """(step, world size) as logged to TensorBoard so far."""
    if not (run_dir / "tensorboard").is_dir():
        return []
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    if "dist/world_size" not in acc.Tags()["scalars"]:
        return []
    return [(e.step, int(e.value)) for e in acc.Scalars("dist/world_size")]


def job(cluster, command: str, *args: str, timeout: float = 180, check: bool = True) -> str:
    """`ray job COMMAND ARGS` against the cluster; its stdout (check: assert that it succeeded)."""
    result = cluster.run([RAY, "job", command, "--address", cluster.dashboard, *args], cwd=ROOT, timeout=timeout)
    assert result.returncode == 0 or not check, (result.stdout + result.stderr)[-4000:]
    return result.stdout


def test_lost_node_shrinks_the_run_and_it_grows_back(ray_cluster, tmp_path, demo_cache):
    args = overrides(tmp_path / "shared", demo_cache, "elastic", "train.steps=100000", "log.every=10",
                     "log.checkpoint_every=20", "log.sample_every=100000", "eval.every=0",
                     "ray.min_workers=1", "ray.max_failures=-1", "ray.resize_check_s=2",
                     "ray.cpus_per_worker=2")  # one worker fits a node (2 CPUs): losing a node loses a worker
    job_id = f"distgan-elastic-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    # RAY_JOB_STOP_WAIT_TIME_S: `ray job stop` (SIGTERM) leaves the run time for its final checkpoint
    runtime_env = {"env_vars": {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(GROUP_START_TIMEOUT_S),
                                "RAY_JOB_STOP_WAIT_TIME_S": "300"}}
    job(ray_cluster, "submit", "--no-wait", "--submission-id", job_id, "--runtime-env-json", json.dumps(runtime_env),
        "--working-dir", ".", "--", "python", "-m", "distgan.train", *args)
    run_dir = tmp_path / "shared" / "elastic"
    try:
        wait_for(lambda: len([s for s, w in world_sizes(run_dir) if w == 2]) >= 3, 300, "2 workers training")
        lost = next(node for node in ray_cluster.nodes[1:] if node.proc.poll() is None)
        killed_at = world_sizes(run_dir)[-1][0]
        lost.kill()  # every process of the node, by PID
        lost_at = time.time()
        wait_for(lambda: [s for s, w in world_sizes(run_dir) if w == 1 and s > killed_at], 300,
                 "the run going on with 1 worker")
        print(f"from the node's loss to 1 worker logging: {time.time() - lost_at:.0f} s")
        shrunk_at = world_sizes(run_dir)[-1][0]
        ray_cluster.add_node()
        wait_for(lambda: len([s for s, w in world_sizes(run_dir) if w == 2 and s > shrunk_at]) >= 2, 300,
                 "the run growing back to 2 workers")
    except BaseException:
        print(job(ray_cluster, "logs", job_id, check=False)[-6000:])  # shown with the failure
        raise
    finally:
        # SIGTERM to the driver: the run ends with a checkpoint (nothing raised here: it would hide a failure above)
        try:
            job(ray_cluster, "stop", job_id, timeout=360, check=False)
        except subprocess.TimeoutExpired:
            pass
    text = job(ray_cluster, "logs", job_id)
    stops = re.findall(r"stopped at step (\d+) with a checkpoint", text)
    assert stops and f"stopped at step {stops[-1]} of 100000 (SIGTERM)" in text, \
        f"the run did not end cleanly: {text[-4000:]}"
    registered = registered_checkpoints(run_dir)
    assert registered and registered[-1] == int(stops[-1]), f"the stop's checkpoint is not the newest: {registered}"
    sizes = world_sizes(run_dir)
    steps = [s for s, _ in sizes]
    assert steps == list(range(10, steps[-1] + 1, 10)), f"a gap or a repeat in TensorBoard's step axis: {steps}"
    runs = [w for i, (_, w) in enumerate(sizes) if i == 0 or sizes[i - 1][1] != w]
    assert runs == [2, 1, 2], f"world sizes over the run: {sizes}"
    batches = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    per_rank = {int(e.value) for e in batches.Scalars("dist/batch_per_rank")}
    assert per_rank == {8, 16}, "the global batch of 16: 8 per rank on 2 workers, 16 on 1"
    assert "resumed from step" in text and "with 1 worker\n" in text
    # the job's runtime env reached Ray Train's controller: the restart that asked for the lost node's worker gave
    # up this soon (the node is declared dead ~10 s after the kill, the restart comes within ~2 s)
    waits = re.findall(r"startup timed out after ([0-9.]+) seconds", text)
    assert waits and all(float(w) == GROUP_START_TIMEOUT_S for w in waits), waits
