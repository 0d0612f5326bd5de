"""Ray mode on a real 2-node Ray cluster on this machine (tests/ray_cluster.py: two `ray start --block`
processes on 127.0.0.1, in a loopback-only network namespace, with moto's S3 server standing in for a bucket).

One cluster for the whole session (the ray_cluster fixture in conftest.py; starting one costs ~10 s, each
TorchTrainer ~25 s). Every run goes through the real command line (`python -m distgan.train run.mode=ray ...`
with RAY_ADDRESS, or `ray job submit`).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import ROOT, short_temp_dir
from ray_cluster import ENV, RAY, RayNode, TestCluster, loopback_namespace
from ray_runs import (checkpoints, finish, logged_steps, overrides, readable_checkpoints, start_train,
                      wait_for)


@pytest.fixture
def cluster(ray_cluster):
    """The session's 2-node cluster (conftest.py)."""
    return ray_cluster


def test_job_submit_spreads_over_two_nodes_with_disjoint_data(cluster, tmp_path, demo_cache):
    """`ray job submit` of a STRICT_SPREAD run: one worker per node, each reading its own half of the data; then
    the sampler and the evaluator read the Ray run folder."""
    args = overrides(tmp_path / "shared", demo_cache, "job", "train.steps=20", "ray.placement_strategy=STRICT_SPREAD",
                     "data.record_keys=true")
    result = subprocess.run(
        [*cluster.prefix, RAY, "job", "submit", "--address", cluster.dashboard, "--working-dir", ".", "--",
         "python", "-m", "distgan.train", *args],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "succeeded" in (result.stdout + result.stderr).lower()
    run_dir = tmp_path / "shared" / "job"
    workers = [json.loads((run_dir / "workers" / f"rank-{r}.json").read_text()) for r in range(2)]
    assert workers[0]["node_id"] != workers[1]["node_id"], "STRICT_SPREAD put both workers on one node"
    assert checkpoints(run_dir) == [10, 20]
    assert logged_steps(run_dir) == [5, 10, 15, 20]
    assert list((run_dir / "samples").glob("step-*.png"))
    keys = [(run_dir / "data-keys" / f"rank-{r}.txt").read_text().split() for r in range(2)]
    # 20 steps x 2 critic batches x 8 images per rank = 320 per rank, within one 256-image-per-rank epoch...
    assert len(keys[0]) == len(keys[1]) == 20 * 2 * 8
    first_epoch = [k[:256] for k in keys]  # each rank's first epoch: 512 images / 2 ranks
    assert not set(first_epoch[0]) & set(first_epoch[1]), "ranks read the same samples"
    assert len(set(first_epoch[0]) | set(first_epoch[1])) == 512
    # the sampler finds the newest generator export in the Ray run folder
    sampled = subprocess.run([sys.executable, "-m", "distgan.sample", str(run_dir), "--out", str(tmp_path / "s"),
                              "--num", "3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert sampled.returncode == 0, sampled.stderr
    assert len(list((tmp_path / "s").glob("*.png"))) == 4  # the grid and 3 images
    # so does the evaluator (SWD: no network needed)
    evaluated = subprocess.run([sys.executable, "-m", "distgan.evaluate", str(run_dir), "--metrics", "swd", "--num",
                                "64", "--cache-dir", demo_cache, "--json", str(tmp_path / "e.json")], cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((tmp_path / "e.json").read_text())["step"] == 20


def test_worker_killed_run_recovers(cluster, tmp_path, demo_cache):
    log = tmp_path / "log.txt"
    steps = 120
    args = overrides(tmp_path / "shared", demo_cache, "fault", f"train.steps={steps}", "ray.max_failures=1")
    proc = start_train(cluster, args, log)
    run_dir = tmp_path / "shared" / "fault"
    # the kill comes as soon as the first checkpoint is on disk, most likely before Ray's controller (which polls
    # the workers every 2 s) has registered it: the restart must still resume from it
    killed_after = wait_for(lambda: readable_checkpoints(run_dir), 300, "a first checkpoint")[-1]
    info = json.loads((run_dir / "workers" / "rank-1.json").read_text())
    os.kill(info["pid"], signal.SIGKILL)  # the real worker process, found by its PID
    assert killed_after < steps, "the run ended before the kill: make it longer"
    text = finish(proc, log)
    assert max(checkpoints(run_dir)) == steps
    new_pid = json.loads((run_dir / "workers" / "rank-1.json").read_text())["pid"]
    assert new_pid != info["pid"], "the run was not restarted"
    resumed = [int(m.group(1)) for m in re.finditer(r"resumed from step (\d+)", text)]
    assert resumed and resumed[0] >= killed_after, f"restart did not resume from a checkpoint: {resumed}"
    steps_logged = logged_steps(run_dir)
    assert steps_logged == list(range(5, steps + 1, 5)), f"gap or repeat in the TensorBoard step axis: {steps_logged}"


def test_diverged_worker_ends_the_run_with_one_line(cluster, tmp_path, demo_cache):
    """A NaN in a Ray worker (a learning rate no run survives): the driver ends with one `error:` line, exit 1, and
    Ray Train does not retry it, though ray.max_failures=-1 (as elastic runs have it) would retry any failure
    forever: a retry starts from the same state and diverges again. run.root is relative: it means the driver's
    working directory (the workers run elsewhere)."""
    log = tmp_path / "log.txt"
    args = overrides("shared", demo_cache, "nan", "train.steps=40", "train.lr_d=1e38", "ray.num_workers=1",
                     "eval.every=0", "ray.max_failures=-1")
    proc = start_train(cluster, args, log, cwd=tmp_path)
    try:
        proc.wait(timeout=180)  # one attempt takes about 30 s here
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 1, text[-3000:]
    workers = set(re.findall(r"\(RayTrainWorker pid=(\d+)", text))
    assert len(workers) == 1, f"the divergence was retried: worker processes {sorted(workers)}"
    driver = [line for line in text.splitlines() if not line.startswith("\x1b[3") and not line.startswith("(")]
    assert driver[-1].startswith("error: training diverged: non-finite "), driver[-5:]
    assert not any("Traceback" in line for line in driver), "the driver printed a traceback"
    assert (tmp_path / "shared" / "nan" / "workers" / "rank-0.json").exists(), "run.root relative to the driver"


def in_cluster_network(cluster, code: str, *args: str) -> None:
    """Python code run where the S3 stand-in is reachable (inside the cluster's namespace)."""
    result = subprocess.run([*cluster.prefix, sys.executable, "-c", code, *args], env=ENV, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


UPLOAD = """
import sys, s3fs
fs = s3fs.S3FileSystem()
fs.mkdir(sys.argv[1])
fs.put(sys.argv[2], sys.argv[3], recursive=True)
"""
DOWNLOAD = """
import sys, s3fs
s3fs.S3FileSystem().get(sys.argv[1], sys.argv[2], recursive=True)
"""


def test_object_storage_ctrl_c_checkpoint_and_resume(cluster, tmp_path, demo_cache):
    """Shards and run folder on S3 (moto's server standing in for a bucket). Ctrl-C to the driver ends the run at
    the next log step with a checkpoint (none was due); the rerun resumes from it, on one continuous step axis."""
    from distgan.data.demo import ensure_demo_shards

    shards = ensure_demo_shards(demo_cache, 16, 512)
    in_cluster_network(cluster, UPLOAD, "distgan-test", shards, "distgan-test/shards")
    storage = ["data.source=s3://distgan-test/shards", "run.root=s3://distgan-test/runs", "log.checkpoint_every=1000"]
    log = tmp_path / "log.txt"
    proc = start_train(cluster, [*overrides(tmp_path, demo_cache, "s3run", "train.steps=400"), *storage], log)
    wait_for(lambda: "step 5/400" in log.read_text(), 300, "training to start")
    proc.send_signal(signal.SIGINT)  # Ctrl-C (SIGTERM: test_elastic.py's `ray job stop`)
    text = finish(proc, log, returncode=128 + signal.SIGINT)  # stopped before train.steps: not done
    stopped = int(re.findall(r"stopped at step (\d+) with a checkpoint", text)[-1])
    assert 0 < stopped < 400 and stopped % 5 == 0
    assert f"stopped at step {stopped} of 400 (SIGINT)" in text  # the driver's summary
    log2 = tmp_path / "log2.txt"
    text = finish(start_train(cluster, [*overrides(tmp_path, demo_cache, "s3run", f"train.steps={stopped + 10}"),
                                        *storage], log2), log2)
    assert f"resumed from step {stopped}" in text

    in_cluster_network(cluster, DOWNLOAD, "s3://distgan-test/runs/s3run", str(tmp_path / "copy"))
    run_dir = tmp_path / "copy"
    assert checkpoints(run_dir) == [stopped, stopped + 10]  # the Ctrl-C's, then the end's
    assert logged_steps(run_dir) == list(range(5, stopped + 11, 5))  # two runs' event files, one step axis
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png"))[-1] == f"step-{stopped + 10:08d}.png"
    assert sorted(p.name for p in (run_dir / "workers").iterdir()) == ["rank-0.json", "rank-1.json"]
    # exports pruned on the bucket as in staging (the newest log.keep_checkpoints), and the best one
    assert sorted(p.name for p in (run_dir / "generators").iterdir()) == [
        f"generator-{stopped:08d}.pt", f"generator-{stopped + 10:08d}.pt", "generator-best.pt"]
    # the evaluator reads the run straight from the bucket
    result = cluster.run([sys.executable, "-m", "distgan.evaluate", "s3://distgan-test/runs/s3run", "--metrics", "swd",
                          "--num", "64", "--cache-dir", demo_cache], cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"s3://distgan-test/runs/s3run/generators/generator-{stopped + 10:08d}.pt" in result.stdout


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.ray
def test_stopping_a_test_cluster_leaves_other_ray_processes_alive():
    """A Ray head of its own (as a user's cluster beside `make test`) survives the suite's cluster stopping: nodes
    are stopped by the PIDs of their `ray start --block` processes, never with the Ray CLI's stop command."""
    prefix, cleanup = loopback_namespace("bystander")
    tmp_path = short_temp_dir()
    (tmp_path / "bystander").mkdir()
    bystander = RayNode(prefix, ["--head", "--port=6390", "--include-dashboard=false", "--num-cpus=1",
                                 "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                                 f"--temp-dir={tmp_path / 'bystander'}"], tmp_path / "bystander.log")
    try:
        theirs = bystander.pids()
        assert len(theirs) >= 3, "the head's daemons are children of its `ray start --block`"
        (tmp_path / "ours").mkdir()
        ours = TestCluster(tmp_path / "ours", cpus=1, workers=0, s3=False, tag="ours")
        started = ours.pids()
        ours.stop()
        assert all(alive(pid) for pid in theirs), "stopping the test cluster killed another Ray"
        assert not [pid for pid in started if alive(pid)], "the test cluster left processes behind"
    finally:
        bystander.stop()
        if cleanup:
            cleanup()
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture
def storage_switch(cluster, tmp_path):
    """(endpoint URL, switch file): the S3 stand-in behind tests/storage_switch.py, which cuts it off while the
    switch file exists."""
    from ray_cluster import free_port, stop_by_pid

    port = 5001 if cluster.prefix else free_port()
    target = int(cluster.env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    switch = tmp_path / "storage-down"
    proxy = subprocess.Popen([*cluster.prefix, sys.executable, str(ROOT / "tests" / "storage_switch.py"), str(port),
                              str(target), str(switch)], stdout=subprocess.PIPE, text=True)
    assert proxy.stdout.readline().strip() == "listening"
    yield f"http://127.0.0.1:{port}", switch
    stop_by_pid(proxy.pid, grace=10)


def submit_through(cluster, endpoint: str, args: list[str], log_path):
    """`ray job submit` whose driver and workers reach S3 through `endpoint` (the job's runtime environment)."""
    runtime_env = json.dumps({"env_vars": {"AWS_ENDPOINT_URL": endpoint}})
    return subprocess.Popen([*cluster.prefix, RAY, "job", "submit", "--address", cluster.dashboard, "--runtime-env-json",
                             runtime_env, "--working-dir", ".", "--", "python", "-m", "distgan.train", *args],
                            cwd=ROOT, env=ENV, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


LIST_RUN = """
import sys, s3fs
fs = s3fs.S3FileSystem()
fs.makedirs("distgan-outage", exist_ok=True)
print(sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{sys.argv[1]}/checkpoint_*")))
"""


def run_listing(cluster, run: str) -> str:
    result = cluster.run([sys.executable, "-c", LIST_RUN, f"distgan-outage/runs/{run}"], timeout=60)
    return result.stdout


def test_an_s3_outage_is_ridden_out_and_one_that_stays_ends_the_run(cluster, tmp_path, demo_cache, storage_switch):
    """The bucket goes away for 20 s in the middle of a run (the proxy cuts every connection): the workers wait it
    out and the run ends as if nothing happened, every checkpoint whole. Then a run whose storage stays away past
    run.storage_timeout_s ends in one line, without falling back to an older checkpoint, its history kept."""
    endpoint, switch = storage_switch
    run_listing(cluster, "none")  # creates the bucket
    storage = ["run.root=s3://distgan-outage/runs", "log.checkpoint_every=5", "train.steps=60"]
    log = tmp_path / "ridden.txt"
    job = submit_through(cluster, endpoint, [*overrides(tmp_path, demo_cache, "ridden", "run.storage_timeout_s=120"),
                                             *storage], log)
    wait_for(lambda: "step 10/60" in log.read_text(), 300, "training to reach step 10")
    switch.touch()
    time.sleep(20)
    switch.unlink()
    text = finish(job, log, timeout=420)
    assert "retrying in" in text, "the outage never reached the run"
    assert "done at step 60" in text
    in_cluster_network(cluster, DOWNLOAD, "s3://distgan-outage/runs/ridden", str(tmp_path / "ridden"))
    assert readable_checkpoints(tmp_path / "ridden") == [50, 55, 60]
    assert logged_steps(tmp_path / "ridden") == list(range(5, 61, 5)), "TensorBoard lost steps in the outage"

    log = tmp_path / "away.txt"
    job = submit_through(cluster, endpoint, [*overrides(tmp_path, demo_cache, "away", "run.storage_timeout_s=8"),
                                             *storage], log)
    wait_for(lambda: "step 10/60" in log.read_text(), 300, "training to reach step 10")
    wait_for(lambda: "checkpoint_00000010" in run_listing(cluster, "away"), 60, "checkpoint 10 in the bucket")
    switch.touch()
    text = finish(job, log, timeout=300, returncode=1)  # ray job submit: the job failed
    driver = [line.strip() for line in text.splitlines() if not re.match(r"\s*(\x1b\[3|\(|\d{4}-)", line)]
    errors = {line for line in driver if line.startswith("error: ")}  # Ray's job CLI prints the log's tail twice
    assert len(errors) == 1, text[-3000:]
    assert "storage did not answer for 8 s (run.storage_timeout_s)" in errors.pop()
    assert not any("Traceback" in line for line in driver), "the driver printed a traceback"
    assert "trying the one before" not in text
    switch.unlink()
    in_cluster_network(cluster, DOWNLOAD, "s3://distgan-outage/runs/away", str(tmp_path / "away"))
    found = checkpoints(tmp_path / "away")  # those written before the outage, every one whole
    assert 10 in found and readable_checkpoints(tmp_path / "away") == found, found
    kept = logged_steps(tmp_path / "away")  # what reached the bucket before the outage (synced every 30 s at most)
    assert kept and kept == list(range(5, 5 * len(kept) + 1, 5)), "the history before the outage is gone"


def test_the_cluster_refuses_a_job_without_its_token(cluster):
    """docs/cluster.md's check, on the test cluster (started as the shipped cluster files start theirs, with
    RAY_AUTH_MODE=token): `ray job list` with a wrong token, or none, is refused; with the token it answers."""
    command = [RAY, "job", "list", "--address", cluster.dashboard]
    env = {k: v for k, v in ENV.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    for without in ({**env, "RAY_AUTH_TOKEN": "wrong"}, {**env, "RAY_AUTH_MODE": "disabled"}):
        refused = cluster.run(command, env=without, timeout=120)
        assert refused.returncode != 0, refused.stdout[-2000:]
        assert re.search(r"Unauthorized|401|[Aa]uthentication", refused.stdout + refused.stderr), refused.stderr[-2000:]
    allowed = cluster.run(command, env=ENV, timeout=120)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
