"""Elastic training on the session's 2-node Ray cluster: a node is lost mid-run (all its processes killed by PID,
as when a spot machine is reclaimed), the run goes on with 1 worker from its last checkpoint, the node comes back,
and the run grows to 2 workers again; the global batch and the update rule stay as they are (tests/
test_equivalence.py shows that N uneven ranks equal one process, and that a change of world size resumes exactly).
"""

import signal
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ray_runs import finish, overrides, start_train, wait_for


def world_sizes(run_dir: Path) -> list[tuple[int, int]]:
    """(step, world size) as logged to TensorBoard so far."""
    if not (run_dir / "tensorboard").is_dir():
        return []
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    if "dist/world_size" not in acc.Tags()["scalars"]:
        return []
    return [(e.step, int(e.value)) for e in acc.Scalars("dist/world_size")]


def test_lost_node_shrinks_the_run_and_it_grows_back(ray_cluster, tmp_path, demo_cache):
    args = overrides(tmp_path / "shared", demo_cache, "elastic", "train.steps=100000", "log.every=10",
                     "log.checkpoint_every=20", "log.sample_every=100000", "eval.every=0",
                     "ray.min_workers=1", "ray.max_failures=-1", "ray.resize_check_s=2",
                     "ray.cpus_per_worker=2")  # one worker fits a node (2 CPUs): losing a node loses a worker
    log = tmp_path / "log.txt"
    proc = start_train(ray_cluster, args, log)
    run_dir = tmp_path / "shared" / "elastic"
    try:
        wait_for(lambda: len([s for s, w in world_sizes(run_dir) if w == 2]) >= 3, 300, "2 workers training")
        lost = next(node for node in ray_cluster.nodes[1:] if node.proc.poll() is None)
        killed_at = world_sizes(run_dir)[-1][0]
        lost.kill()  # every process of the node, by PID
        wait_for(lambda: [s for s, w in world_sizes(run_dir) if w == 1 and s > killed_at], 300,
                 "the run going on with 1 worker")
        shrunk_at = world_sizes(run_dir)[-1][0]
        ray_cluster.add_node()
        wait_for(lambda: len([s for s, w in world_sizes(run_dir) if w == 2 and s > shrunk_at]) >= 2, 300,
                 "the run growing back to 2 workers")
    finally:
        proc.send_signal(signal.SIGTERM)  # the run ends with a checkpoint
    text = finish(proc, log)
    sizes = world_sizes(run_dir)
    steps = [s for s, _ in sizes]
    assert steps == list(range(10, steps[-1] + 1, 10)), f"a gap or a repeat in TensorBoard's step axis: {steps}"
    runs = [w for i, (_, w) in enumerate(sizes) if i == 0 or sizes[i - 1][1] != w]
    assert runs == [2, 1, 2], f"world sizes over the run: {sizes}"
    batches = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    per_rank = {int(e.value) for e in batches.Scalars("dist/batch_per_rank")}
    assert per_rank == {8, 16}, "the global batch of 16: 8 per rank on 2 workers, 16 on 1"
    assert "resumed from step" in text and "with 1 worker\n" in text
