"""Ray Tune searches on the session's real 2-node Ray cluster (conftest.ray_cluster), through the real command line.

Tiny trials (16 px, width 8, one CPU worker each) ranked by SWD (eval/swd: weights-free; eval/fid works the same
way with the Inception network, which is too slow for CPU tests).
"""

import csv
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, TINY_MODEL, run_module
from ray_cluster import ENV

TINY = [*TINY_MODEL, "data.demo_images=512", "data.shuffle_buffer=64",
        "train.batch_size=16", "train.device=cpu", "log.every=10", "eval.metrics=[swd]", "eval.num_samples=128",
        "ray.num_workers=1", "search.metric=eval/swd", "search.max_concurrent_trials=2"]


def tune_command(cluster, root: Path, cache: str, *extra: str) -> list[str]:
    return [*cluster.prefix, sys.executable, "-m", "distgan.tune", "--config", str(ROOT / "configs" / "tune-demo.yaml"),
            *TINY, f"data.cache_dir={cache}", f"run.root={root}", *extra]


def run_tune(cluster, args, log: Path, timeout: float = 600) -> str:
    env = {**ENV, "RAY_ADDRESS": cluster.address}
    proc = subprocess.run(args, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, timeout=timeout)
    text = log.read_text()
    assert proc.returncode == 0, text[-5000:]
    return text


def cluster_state(cluster) -> dict:
    """Free CPUs, total CPUs and the placement groups not yet removed, asked of the cluster itself."""
    code = ("import json, sys, ray; from ray.util.state import list_placement_groups; ray.init(address='auto'); "
            "pgs = [p for p in list_placement_groups(address=%r, detail=True) if p.state != 'REMOVED']; "
            "[print(p.placement_group_id, p.creator_job_id, p.state, p.bundles, file=sys.stderr) for p in pgs]; "
            "print(json.dumps({'free': ray.available_resources().get('CPU', 0), "
            "'total': ray.cluster_resources().get('CPU', 0), 'groups': [p.state for p in pgs]}))") % cluster.dashboard
    result = cluster.run([sys.executable, "-c", code], timeout=120, env={**ENV, "RAY_ADDRESS": cluster.address})
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads(result.stdout.strip().splitlines()[-1])
    state["details"] = result.stderr[-3000:]
    return state


def wait_until_freed(cluster, seconds: float = 120) -> dict:
    """The cluster's state once no placement group is left and every CPU is free, or after `seconds` (Ray removes
    a finished job's groups asynchronously)."""
    deadline = time.time() + seconds
    while True:
        state = cluster_state(cluster)
        if (state["groups"] == [] and state["free"] == pytest.approx(state["total"])) or time.time() > deadline:
            return state
        time.sleep(2)


def attempt_spans(search_dir: Path) -> dict[tuple[str, int], tuple[float, float]]:
    """(trial, pid) -> (start, last report) of every run of a trial, from Tune's result files: a run starts
    time_since_restore before each of its reports (timestamps are whole seconds)."""
    spans: dict[tuple[str, int], tuple[float, float]] = {}
    for result in (search_dir / "tune").glob("*/result.json"):
        for line in result.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                start, end = r["timestamp"] - r["time_since_restore"], r["timestamp"]
                old = spans.get((r["trial_id"], r["pid"]), (start, end))
                spans[(r["trial_id"], r["pid"])] = (min(old[0], start), max(old[1], end))
    return spans


def most_at_once(spans: dict, slack: float = 2.0) -> int:
    """The most trial runs alive at the start of one (counting an overlap only when longer than the slack)."""
    return max(1 + sum(1 for other, (s, e) in spans.items() if other != key and s <= start < e - slack)
               for key, (start, _) in spans.items())


def reported_steps(search_dir: Path) -> dict[str, list[int]]:
    """Each trial's reported steps, from Tune's own result files."""
    steps = {}
    for result in (search_dir / "tune").glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if lines:
            steps[lines[0]["trial_id"]] = [int(r["step"]) for r in lines]
    return steps


def rung_records(search_dir: Path) -> dict[str, float]:
    """The results distgan's ASHA has recorded at its first rung (step 20), by trial: its records file."""
    path = search_dir / "asha-rungs.json"
    try:
        rungs = json.loads(path.read_text())["brackets"][0]  # by milestone, written as floats ("20.0")
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or caught mid-write
        return {}
    return next((records for milestone, records in rungs.items() if float(milestone) == 20), {})


def test_asha_search_interrupted_resumes_and_frees_the_cluster(ray_cluster, tmp_path, demo_cache):
    """3 trials, 2 at a time. The driver is killed (by PID) once ASHA has recorded the first two trials' results at
    its rung; the rerun resumes the search to the end; ASHA has stopped the third trial early; trials.csv lists the
    best first, and best.yaml holds its values and trains with distgan.train.

    The trials come in grid order: two with sound generator learning rates (1e-3, 5e-4), then one with a rate that
    wrecks the generator within a few steps (1e-1). The third starts only when one of the first two has finished,
    so it reaches ASHA's rung (step 20) after two better results are recorded there, and is stopped. (Which of the
    first two reaches the rung second is a race, and with one record at the rung ASHA's cutoff is that record: the
    second may be stopped too, when its result is the worse of the two by noise.) (With sampled
    rates the SWD of 20-step trials differs by noise only; a run whose trials reach the rung in order of improving
    SWD stops none, as happened once.) The records at the rung must survive the interruption: without distgan's
    ResumableASHA the first two trials' results at step 20, recorded before the kill, are forgotten, and the third
    goes on to the end (as happened in a CI run). Until distgan gave the limit of 2 to the search generator, Tune
    ignored it and started every trial at once (another CI failure): Tune's result files must show 2 at most."""
    search = ["search.name=asha", "search.num_samples=1", "train.steps=40", "eval.every=20",
              "search.space.train.lr_g={grid: [1.0e-3, 5.0e-4, 1.0e-1]}", "search.asha.reduction_factor=2"]
    args = tune_command(ray_cluster, tmp_path / "runs", demo_cache, *search)
    search_dir = tmp_path / "runs" / "asha"
    env = {**ENV, "RAY_ADDRESS": ray_cluster.address}
    first = subprocess.Popen(args, cwd=ROOT, env=env, stdout=open(tmp_path / "first.log", "w"),
                             stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while len(rung_records(search_dir)) < 2 and time.time() < deadline:
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-5000:]
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)  # the search's driver, by its PID: its trials go with it
    assert len(rung_records(search_dir)) == 2, "the kill was to come after the first two results at the rung"
    first.wait()
    assert not (search_dir / "trials.csv").exists()

    text = run_tune(ray_cluster, args, tmp_path / "second.log")
    assert "resuming the search" in text
    steps = reported_steps(search_dir)
    assert len(steps) == 3, steps
    finals = sorted(s[-1] for s in steps.values())
    assert finals[-1] == 40 and finals[0] < 40, f"ASHA stopped no trial early: {steps}"
    rows = (search_dir / "trials.csv").read_text().splitlines()
    assert len(rows) == 4, rows
    swd = {float(r["train.lr_g"]): float(r["eval/swd"]) for r in csv.DictReader(rows)}  # at each trial's last report
    status = {float(r["train.lr_g"]): r["status"] for r in csv.DictReader(rows)}
    assert status[1e-1] == "stopped early" and "completed" in (status[1e-3], status[5e-4]), status
    print(f"eval/swd by lr_g: {swd}")
    assert max(swd[1e-3], swd[5e-4]) < swd[1e-1], "the wrecked trial is not the worse one"
    assert len(rung_records(search_dir)) == 3, "every trial's result at the rung, before and after the resume"
    listed = [float(r["eval/swd"]) for r in csv.DictReader(rows)]
    assert listed == sorted(listed), "trials.csv lists the best trial first"
    assert sorted(p.name for p in (search_dir / "trials").iterdir()) == sorted(steps)  # per-trial TensorBoard
    spans = attempt_spans(search_dir)
    assert most_at_once(spans) <= 2, f"more than search.max_concurrent_trials=2 trials at once: {spans}"
    state = wait_until_freed(ray_cluster)
    assert state["groups"] == [] and state["free"] == pytest.approx(state["total"]), state

    best = yaml.safe_load((search_dir / "best.yaml").read_text())
    assert best["run"]["name"] == "asha-best"
    assert best["train"]["lr_g"] == float(next(csv.DictReader(rows))["train.lr_g"]) in (1e-3, 5e-4)  # the best's
    # the file as it is (here in local mode and for 10 steps: what it trains, not how long, is under test)
    trained = subprocess.run([sys.executable, "-m", "distgan.train", "--config", str(search_dir / "best.yaml"),
                              "run.mode=local", "train.steps=10"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "done at step 10" in trained.stdout


def test_a_stopped_search_says_so_and_the_same_command_resumes_it(ray_cluster, tmp_path, demo_cache):
    """SIGTERM (what `ray job stop` sends; distgan turns it into Tune's graceful Ctrl-C) once the trial has reported:
    the search saves its state, says it was interrupted and exits 143, with no trials.csv or best.yaml of a search
    that has not ended (before, it exited 0 with the running trials as "stopped early" and a best.yaml). The same
    command then resumes the trial from its own checkpoint and finishes."""
    search = ["search.name=stopped", "search.num_samples=1", "train.steps=200", "eval.every=20"]  # time to stop it
    args = tune_command(ray_cluster, tmp_path / "runs", demo_cache, *search)
    search_dir = tmp_path / "runs" / "stopped"
    env = {**ENV, "RAY_ADDRESS": ray_cluster.address}
    log = tmp_path / "first.log"
    first = subprocess.Popen(args, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    # the trial's first report, with its checkpoint (Tune's result files are written later, in batches)
    while not list((search_dir / "tune").glob("*/checkpoint_000000")) and time.time() < deadline:
        assert first.poll() is None, log.read_text()[-5000:]
        time.sleep(0.5)
    first.send_signal(signal.SIGTERM)  # the search's driver, by its PID
    assert first.wait(timeout=120) == 143, log.read_text()[-5000:]
    assert any(line.startswith("search interrupted (SIGTERM): the same command resumes it")
               for line in log.read_text().splitlines()), log.read_text()[-3000:]  # Ray's log lines may follow
    assert not (search_dir / "trials.csv").exists() and not (search_dir / "best.yaml").exists()

    text = run_tune(ray_cluster, args, tmp_path / "second.log")
    assert "resuming the search" in text
    rows = list(csv.DictReader((search_dir / "trials.csv").read_text().splitlines()))
    assert [(r["status"], r["steps"]) for r in rows] == [("completed", "200")], rows
    starts = [json.loads(line) for f in (search_dir / "trials").glob("*/starts.jsonl")
              for line in f.read_text().splitlines()]
    assert len(starts) == 1 and not starts[0]["exploit"] and starts[0]["step"] >= 20, starts  # its own checkpoint


def test_asha_keeps_its_rung_records_when_the_search_is_resumed(tmp_path, caplog):
    """Tune restores a search's scheduler as it was pickled at the start (empty rungs). A trial reaching the rung after
    the resume must still be measured against the results recorded before the interruption."""
    import pickle
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from distgan.launch.asha import ResumableASHA

    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(3)]
    started = ResumableASHA(str(tmp_path), time_attr="step", metric="eval/swd", mode="min", max_t=40,
                            grace_period=20, reduction_factor=2)
    as_pickled = pickle.dumps(started)
    for trial in trials[:2]:
        started.on_trial_add(None, trial)
    assert started.on_trial_result(None, trials[0], {"step": 20, "eval/swd": 0.20}) == TrialScheduler.CONTINUE
    assert started.on_trial_result(None, trials[1], {"step": 20, "eval/swd": 0.18}) == TrialScheduler.CONTINUE

    def resumed() -> ResumableASHA:
        scheduler = pickle.loads(as_pickled)
        for trial in trials:
            scheduler.on_trial_add(None, trial)
        return scheduler

    assert resumed().on_trial_result(None, trials[2], {"step": 20, "eval/swd": 0.5}) == TrialScheduler.STOP
    # unreadable records: said so, and the search goes on as plain ASHA would (the first at an empty rung goes on)
    (tmp_path / ResumableASHA.RECORDS).write_text("{trunc")
    assert resumed().on_trial_result(None, trials[2], {"step": 20, "eval/swd": 0.5}) == TrialScheduler.CONTINUE
    assert "cannot be read" in caplog.text


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    return dict(scalar_events(run_dir, tag))


def scalar_events(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) as TensorBoard shows them, repeats included."""
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_pbt_exploits_the_donors_state_with_mutated_hyperparameters(ray_cluster, tmp_path, demo_cache):
    # One trial sound, one wrecked from the start (generator learning rates 5e-4 and 1e-1, sampled with a fixed seed),
    # so that the ranking holds at every report. (Sampled rates of 7e-4 and 2e-6 gave SWDs that differ by noise at
    # steps 20-60, about 0.218 against 0.220: in one CI run each report ranked its trial on top and PBT never
    # exploited.) Asynchronous PBT ranks a reporting trial against the other's latest score: on top, its checkpoint
    # becomes the donor's; below, it clones the donor's checkpoint, or skips if there is none yet. Alone with a score
    # (the first report at step 20), it is neither. So the wrecked trial exploits at step 20, 40 or 60, depending
    # on the order of the reports (the last step is never handed to the scheduler), then trains on to step 80.
    search = ["search.name=pbt", "search.scheduler=pbt", "search.num_samples=2", "train.steps=80", "eval.every=20",
              "search.pbt.resample_probability=1.0", "search.space.train.n_critic={choice: [1, 2, 3]}",
              "search.space.train.lr_g={choice: [1.0e-1, 5.0e-4]}", "search.seed=6",
              "log.keep_checkpoints=10"]  # the donor's checkpoint is read back below
    run_tune(ray_cluster, tune_command(ray_cluster, tmp_path / "runs", demo_cache, *search), tmp_path / "pbt.log")
    search_dir = tmp_path / "runs" / "pbt"
    starts = [json.loads(line) for f in (search_dir / "trials").glob("*/starts.jsonl")
              for line in f.read_text().splitlines()]
    exploits = sorted((s for s in starts if s["exploit"]), key=lambda s: s["step"])
    assert exploits, f"PBT never exploited: {starts}"
    target_id, donor_step, new_config = exploits[0]["trial"], exploits[0]["step"], exploits[0]["config"]
    assert scalars(search_dir / "trials" / target_id, "lr/generator")[10] == pytest.approx(0.1), \
        "the wrecked trial clones the sound one, not the other way round"
    donor_state = torch.load(Path(exploits[0]["from"]) / "checkpoint.pt", weights_only=False)["state"]
    # the exploited trial's later Train run (it starts from the donor's checkpoint under a new name)
    run = f"{target_id}-from-{hashlib.sha1(exploits[0]['from'].encode()).hexdigest()[:10]}"
    after = sorted((search_dir / "train" / run).glob("checkpoint_*/checkpoint.pt"))
    assert after, "the exploited trial never restarted from a checkpoint"
    state = torch.load(after[0], weights_only=False)["state"]
    steps_run = state["step"] - donor_step
    assert steps_run > 0
    # its counters continue the donor's: critic updates = the donor's + the mutated n_critic per step since
    assert state["critic_steps"] == donor_state["critic_steps"] + new_config["train.n_critic"] * steps_run
    assert state["opt_g"]["param_groups"][0]["lr"] == pytest.approx(new_config["train.lr_g"])
    logged = scalars(search_dir / "trials" / target_id, "hparams/n_critic")
    lr = scalars(search_dir / "trials" / target_id, "lr/generator")
    later = [s for s in logged if donor_step < s <= state["step"]]
    assert later and all(logged[s] == new_config["train.n_critic"] for s in later)
    assert all(lr[s] == pytest.approx(new_config["train.lr_g"]) for s in later)
    shown = [step for step, _ in scalar_events(search_dir / "trials" / target_id, "hparams/n_critic")]
    assert shown == sorted(set(shown)), f"one step axis in the trial's TensorBoard, no step twice: {shown}"


@pytest.mark.parametrize("override, message", [
    ("search.space.model.nonsense={choice: [1]}", "search.space.model.nonsense: is not a training config key"),
    # every value a trial can get is a valid training value, checked before any trial (not a failed trial each)
    ("search.space.train.n_critic={choice: [1, 0]}", "search.space.train.n_critic: 0 is not a valid value: "
                                                     "train.n_critic: must be >= 1"),
    ("search.space.train.lr_g=loguniform(1e-4,1e-3)", "search.space.train.lr_g: 'loguniform(1e-4,1e-3)' is not a "
                                                      "valid value"),
    ("train.steps=50", "search.asha.grace_period: ASHA's first rung, at step 100"),  # eval.every=100: never reached
    ("search.space.train.n_critic={choice: []}", "search.space.train.n_critic: choice needs a non-empty list"),
    ("search.space.train.lr_g={uniform: [0.1, 0.01]}", "search.space.train.lr_g: uniform needs low < high"),
    ("search.space.train.lr_g={loguniform: [0, 0.01]}", "search.space.train.lr_g: loguniform needs low > 0"),
    ("search.scheduler=hyperband", "search.scheduler: must be one of ('asha', 'pbt')"),
    ("search.metric=eval/fid", "search.metric: 'eval/fid' is not reported"),
    # values YAML cannot read: named with their key, on one line
    ("search.space.train.lr_g={loguniform:[0,1]}", "search.space.train.lr_g={loguniform:[0,1]}: not a YAML value: "
                                                   "found unexpected ':' while scanning a plain scalar (YAML wants"),
    ("search.num_samples={a: 1", "search.num_samples={a: 1: not a YAML value: did not find expected ',' or '}'"),
])
def test_bad_search_is_one_line_before_any_trial(tmp_path, demo_cache, override, message):
    result = run_module("distgan.tune", "--config", "configs/tune-demo.yaml", f"run.root={tmp_path}",
                        f"data.cache_dir={demo_cache}", override, env={"RAY_ADDRESS": "127.0.0.1:1"},
                        timeout=60)  # past the check, the search would wait for a cluster that is not there
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), result.stderr[-500:]
    assert result.stderr.count("error: ") == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not list(tmp_path.iterdir()), "nothing written"


def test_a_rerun_of_a_search_must_bring_its_settings(tmp_path, demo_cache):
    """Tune restores a search with the trials, space and sample count it began with, whatever the command says: a
    rerun with other settings is refused before Ray starts, naming what differs; the same settings pass."""
    from distgan.io.run_folder import RunFolder
    from distgan.errors import ConfigError
    from distgan.launch.search import load_search
    from distgan.tune import SETTINGS, check_same_search, settings

    folder = RunFolder(str(tmp_path / "search"))
    first = settings(*load_search(str(ROOT / "configs" / "tune-demo.yaml"), ["model.width=8"]))
    folder.write_text(SETTINGS, json.dumps(first))
    check_same_search(folder, settings(*load_search(str(ROOT / "configs" / "tune-demo.yaml"), ["model.width=8"])))
    again = settings(*load_search(str(ROOT / "configs" / "tune-demo.yaml"), ["model.width=16", "search.num_samples=3",
                                                                             "ray.address=10.0.0.1:6379"]))
    with pytest.raises(ConfigError, match=r"started with other settings \(model.width: 8 -> 16, search.num_samples: "
                                          r"4 -> 3\)"):
        check_same_search(folder, again)

    (tmp_path / "runs" / "demo-asha" / "tune").mkdir(parents=True)
    (tmp_path / "runs" / "demo-asha" / SETTINGS).write_text(json.dumps(first))
    # a search Tune would resume (its state file; the check leaves alone a search that failed before it began)
    (tmp_path / "runs" / "demo-asha" / "tune" / "tuner.pkl").write_bytes(b"")
    result = run_module("distgan.tune", "--config", "configs/tune-demo.yaml", f"run.root={tmp_path / 'runs'}",
                        f"data.cache_dir={demo_cache}", env={"RAY_ADDRESS": "127.0.0.1:1"}, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: search.name=demo-asha: the search in "), result.stderr[-500:]


@pytest.mark.ray
def test_a_trial_the_local_cluster_cannot_hold_besides_its_driver_is_refused(tmp_path, demo_cache):
    """Workers that fill every core leave none for the trial's own driver (search.driver_cpus): the trial would
    wait for its workers forever."""
    import os

    cores = len(os.sched_getaffinity(0))
    result = run_module("distgan.tune", "--config", "configs/tune-demo.yaml", *TINY, f"run.root={tmp_path}",
                        f"data.cache_dir={demo_cache}", "ray.num_workers=1", f"ray.cpus_per_worker={cores}",
                        env={"RAY_ADDRESS": ""}, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "besides its driver's search.driver_cpus=0.1" in result.stderr.strip().splitlines()[-1], \
        result.stderr[-1000:]


def test_pbt_explores_only_values_training_accepts():
    """PBT perturbs a cloned config: a choice moves to a neighbouring value of its list (given to Ray as a domain, it
    was multiplied by 0.8 or 1.2, off the list), and a uniform or loguniform value, multiplied, is clamped into its
    range (a beta1 of 0.95 x 1.2 would be refused by the trial)."""
    import random
    from types import SimpleNamespace

    from distgan.launch.search import apply_params, load_search
    from distgan.tune import scheduler

    # the file's space (lr_g, lr_d loguniform; n_critic a choice), n_critic's choices widened, and beta1
    cfg, search = load_search(str(ROOT / "configs" / "tune-demo.yaml"), [
        "search.scheduler=pbt", "search.space.train.beta1={uniform: [0.5, 0.95]}",
        "search.space.train.lr_g={loguniform: [1.0e-4, 1.0e-3]}", "search.space.train.n_critic={choice: [1, 3, 5]}"])
    assert sorted(search.space) == ["train.beta1", "train.lr_d", "train.lr_g", "train.n_critic"]
    pbt = scheduler(cfg, search, "x")
    random.seed(0)
    seen = {"train.n_critic": set(), "train.beta1": set()}
    for start in ({"train.beta1": 0.95, "train.lr_g": 1.0e-3, "train.lr_d": 2.0e-3, "train.n_critic": 5},
                  {"train.beta1": 0.5, "train.lr_g": 1.0e-4, "train.lr_d": 5.0e-5, "train.n_critic": 1},
                  {"train.beta1": 0.7, "train.lr_g": 3.0e-4, "train.lr_d": 3.0e-4, "train.n_critic": 3}):
        for _ in range(100):
            new, _ = pbt._get_new_config(None, SimpleNamespace(config=dict(start)))
            apply_params(cfg, new)  # raises if training would refuse it
            assert new["train.n_critic"] in (1, 3, 5) and 0.5 <= new["train.beta1"] <= 0.95
            assert 1.0e-4 <= new["train.lr_g"] <= 1.0e-3 and 5.0e-5 <= new["train.lr_d"] <= 2.0e-3
            seen["train.n_critic"].add(new["train.n_critic"])
            seen["train.beta1"].add(new["train.beta1"])
    assert seen["train.n_critic"] == {1, 3, 5} and {0.5, 0.95} <= seen["train.beta1"]  # explored, and clamped


@pytest.mark.parametrize("overrides, message", [
    (["search.space.train.n_critic={uniform: [1, 5]}"],
     "search.space.train.n_critic: uniform samples floats, and train.n_critic takes int values: use choice"),
    # each value alone is fine; together a worker would get no sample
    (["search.space.train.batch_size={choice: [2, 64]}", "search.space.ray.num_workers={choice: [1, 4]}"],
     "search.space: a trial could get "),
    (["search.space.eval.every={choice: [25, 50]}"], "search.space.eval.every: is the search's schedule"),
    (["search.asha.reduction_factor=1"], "search.asha.reduction_factor: must be a number > 1, got 1"),
    (["search.asha.grace_period=abc"], "search.asha.grace_period: must be an integer >= 0, got 'abc'"),
    (["search.scheduler=pbt", "search.pbt.quantile_fraction=0.8"], "search.pbt.quantile_fraction: must be a number in [0, 0.5], got 0.8"),
])
def test_searches_trials_would_fail_in_are_refused_up_front(overrides, message):
    """What Ray's schedulers or the trials would refuse (with a traceback, or a failed trial each) is one line before
    the search starts."""
    from distgan.errors import ConfigError
    from distgan.launch.search import load_search

    with pytest.raises(ConfigError) as err:
        load_search(str(ROOT / "configs" / "tune-demo.yaml"), overrides)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
