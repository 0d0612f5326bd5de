"""Mistakes found only after the config loads (a path that cannot be written, a device that is not there, a run
resumed with another model, a cut-short generator export) end with one line and exit status 2 before any work
is done, or are worked around with a warning; nothing already written is lost."""

import re

import pytest
import torch

from conftest import run_module
from distgan.io.device import torch_device
from distgan.engine.checkpoint import load_newest_generator
from distgan.io.run_folder import ensure_writable
from distgan.errors import StorageError, UserError
from distgan.launch.local import pick_device, train_local


def error_line(result) -> str:
    """The one line a user error prints (log records, which start with a date, aside)."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [l for l in result.stderr.splitlines() if l.strip() and not re.match(r"\d{4}-\d\d-\d\d[ T]", l)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def test_unwritable_places_are_named_before_any_work(tmp_path, demo_cache):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with pytest.raises(StorageError, match=f"^--out: cannot write to {a_file}/x"):
        ensure_writable(a_file / "x", "--out")
    from distgan.data.demo import ensure_demo_shards

    with pytest.raises(StorageError, match="^data.cache_dir: cannot write to"):
        ensure_demo_shards(str(a_file), 16, 8)
    result = run_module("distgan.train", "run.mode=local", f"run.root={a_file}", f"data.cache_dir={demo_cache}",
                        "model.image_size=16", "data.demo_images=512", "train.steps=2", timeout=120)
    assert result.returncode == 2 and error_line(result).startswith(f"error: run.root: cannot write to {a_file}/")


def test_the_default_device_on_a_gpu_machine(monkeypatch):
    """train.device=auto (the default) takes the GPU where there is one. This machine has none: CUDA's answers are
    mocked (the one boundary here that cannot be real), as torch gives them with one GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("auto") == pick_device("cuda") == torch.device("cuda", 0)
    assert torch_device("cuda:0", "--device") == torch.device("cuda", 0)
    with pytest.raises(UserError, match="^--device=cuda:1, but torch sees 1 CUDA device$"):
        torch_device("cuda:1", "--device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_a_device_that_is_not_there_is_a_user_error():
    with pytest.raises(UserError, match="^train.device=cuda, but torch sees no CUDA device"):
        pick_device("cuda")
    with pytest.raises(UserError, match="^--device=cuda:1, but torch sees no CUDA device"):
        torch_device("cuda:1", "--device")
    with pytest.raises(UserError, match="^--device: 'tpu' is not a device"):
        torch_device("tpu", "--device")
    assert pick_device("auto") == torch.device("cpu")


def test_resuming_with_another_model_is_refused_and_the_run_kept(tiny_config, tmp_path):
    run = tmp_path / "run"
    train_local(tiny_config("train.steps=2", "log.checkpoint_every=2"), run)
    kept = sorted(p.name for p in run.rglob("*"))
    for override, named in [("model.width=4", "model.width=4 (the run's: 8)"),
                            ("model.critic_dropout=0.3", "model.critic_dropout=0.3 (the run's: 0.0)")]:
        with pytest.raises(UserError, match=re.escape(named)):
            train_local(tiny_config("train.steps=4", override), run)
    assert sorted(p.name for p in run.rglob("*")) == kept
    # what does not change a weight's shape may change: another dropout rate, another batch size
    assert train_local(tiny_config("train.steps=3", "model.critic_dropout=0.0", "train.batch_size=8"), run).step == 3


def test_a_cut_short_generator_export_falls_back_and_outputs_are_checked_first(tiny_config, tmp_path, caplog,
                                                                                 monkeypatch):
    import distgan.evaluate
    import distgan.evaluation.evaluator
    import distgan.sample

    run = tmp_path / "run"
    train_local(tiny_config("train.steps=6", "log.checkpoint_every=2"), run)
    # a mistake other than an unreadable file is the answer at once, not a walk back through older exports
    with pytest.raises(UserError, match="generator-00000006.pt is a generator export"):
        load_newest_generator(run, ema=False)
    assert "trying the export before it" not in caplog.text
    newest = run / "generators" / "generator-00000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a copy cut short
    G, info, used = load_newest_generator(run)
    assert info["step"] == 4 and used.endswith("generator-00000004.pt")
    assert "generator-00000006.pt" in caplog.text

    # a place that cannot be written is found before the work: the work is never started
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    work = []
    monkeypatch.setattr(distgan.sample, "generate", lambda *args, **kwargs: work.append("sampled"))
    monkeypatch.setattr(distgan.evaluation.evaluator, "Evaluator", lambda *args, **kwargs: work.append("evaluated"))
    with pytest.raises(StorageError, match="^--out: cannot write to"):
        distgan.sample.main([str(run), "--out", str(a_file / "out"), "--num", "1"])
    with pytest.raises(StorageError, match="^--json: cannot write to"):
        distgan.evaluate.main([str(run), "--metrics", "swd", "--json", str(a_file / "m.json")])
    with pytest.raises(StorageError, match=f"^--json: {tmp_path} is a folder; name a file in it$"):
        distgan.evaluate.main([str(run), "--metrics", "swd", "--json", str(tmp_path)])
    assert work == []
    import distgan.bench

    with pytest.raises(StorageError, match=f"^--json: {tmp_path} is a folder; name a file in it$"):
        distgan.bench.main(["--modes", "local", "--steps", "1", "--json", str(tmp_path)])
    sampled = run_module("distgan.sample", str(run), "--out", str(a_file / "out"), "--num", "1", timeout=120)
    assert sampled.returncode == 2 and error_line(sampled).startswith("error: --out: cannot write to")


def test_an_interrupt_outside_training_exits_130_with_one_line(capsys):
    from distgan.cli import run_main

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        run_main(interrupted)
    assert exit_.value.code == 130 and capsys.readouterr().err == "error: interrupted\n"


def test_a_ray_run_resumed_with_another_model_is_refused_before_the_cluster(tiny_config, tmp_path):
    """In Ray mode the driver answers from the run's generator export, in one line, before it starts or joins a
    cluster (here an address where none listens: reaching for it would fail otherwise)."""
    run = tmp_path / "runs" / "r"
    train_local(tiny_config("train.steps=2", "log.checkpoint_every=2"), run)
    (run / "checkpoint_00000002").mkdir()  # laid out as Ray mode leaves it (Ray mode refuses a local-mode run)
    (run / "checkpoints" / "ckpt-00000002.pt").rename(run / "checkpoint_00000002" / "checkpoint.pt")
    result = run_module("distgan.train", "run.mode=ray", f"run.root={tmp_path / 'runs'}", "run.name=r",
                        "model.image_size=16", "model.z_dim=16", "model.width=4", "model.critic_dropout=0.0",
                        "data.demo_images=512", f"data.cache_dir={tiny_config().data.cache_dir}", "train.steps=4",
                        env={"RAY_ADDRESS": "127.0.0.1:1"}, timeout=60)
    assert result.returncode == 2
    assert error_line(result).startswith("error: run r resumes from step 2, whose model differs: model.width=4 "
                                         "(the run's: 8)")


def test_a_run_is_resumed_only_in_the_mode_that_trained_it(tiny_config, tmp_path, demo_cache):
    """Local mode keeps checkpoints/ckpt-*.pt, Ray mode Ray Train's checkpoint_*/: in the other mode's run folder a
    run would start again from step 0 over that run's exports and samples. It is refused in one line before any
    work (Ray mode before it starts a cluster), and the folder is left as it was."""
    train_local(tiny_config("train.steps=2"))  # run.root=tmp_path/runs, run.name=t
    run = tmp_path / "runs" / "t"
    before = sorted((p.relative_to(run).as_posix(), p.stat().st_mtime_ns) for p in run.rglob("*"))
    result = run_module("distgan.train", "run.mode=ray", f"run.root={tmp_path / 'runs'}", "run.name=t",
                        f"data.cache_dir={demo_cache}", "model.image_size=16", "data.demo_images=512",
                        env={"RAY_ADDRESS": "127.0.0.1:1"}, timeout=60)  # no cluster there: refused before it
    assert result.returncode == 2
    assert error_line(result) == (f"error: {run} was trained with run.mode=local (checkpoints/ckpt-00000002.pt), "
                                  f"whose checkpoints run.mode=ray does not resume: rerun it with run.mode=local, "
                                  f"or give another run.name")
    assert sorted((p.relative_to(run).as_posix(), p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_local_mode_refuses_a_run_that_ray_mode_trained(tiny_config, tmp_path):
    train_local(tiny_config("train.steps=2"))
    ray_run = tmp_path / "runs" / "r"  # what Ray mode leaves: checkpoint_<step>/checkpoint.pt
    (ray_run / "checkpoint_00000002").mkdir(parents=True)
    (tmp_path / "runs" / "t" / "checkpoints" / "ckpt-00000002.pt").rename(
        ray_run / "checkpoint_00000002" / "checkpoint.pt")
    with pytest.raises(UserError, match=r"r was trained with run.mode=ray \(checkpoint_00000002/checkpoint.pt\), "
                                        r"whose checkpoints run.mode=local does not resume"):
        train_local(tiny_config("train.steps=4", "run.name=r"))
    assert sorted(p.name for p in ray_run.iterdir()) == ["checkpoint_00000002"]


@pytest.mark.parametrize("env, override, message", [
    # the dashboard's address, which `ray job submit` takes: Ray's ValueError was a traceback
    ({"RAY_ADDRESS": "http://127.0.0.1:8265"}, "train.steps=1", "RAY_ADDRESS=http://127.0.0.1:8265 is not a Ray "
     "cluster address: give the cluster's GCS address (HEAD:6379)"),
    ({"RAY_ADDRESS": "127.0.0.1:1"}, "ray.address=http://10.0.0.1:8265", "ray.address=http://10.0.0.1:8265 is not"),
    # nobody listening there: ray.init retried for minutes
    ({"RAY_ADDRESS": "127.0.0.1:1"}, "train.steps=1", "RAY_ADDRESS=127.0.0.1:1: no Ray cluster answers there"),
    # a storage scheme whose package is missing (adlfs is in no extra), one fsspec does not know: before any cluster
    ({"RAY_ADDRESS": "127.0.0.1:1"}, "run.root=az://container/runs",
     "az://container/runs/demo: Install adlfs to access Azure Datalake Gen2 and Azure Blob Storage (pip install"),
    ({"RAY_ADDRESS": "127.0.0.1:1"}, "run.root=nosuch://bucket/runs", "nosuch://bucket/runs/demo: Protocol not known"),
])
def test_a_cluster_or_storage_that_cannot_be_used_is_one_line(tmp_path, env, override, message):
    result = run_module("distgan.train", "--config", "configs/demo.yaml", f"run.root={tmp_path}", override,
                        env=env, timeout=120)
    assert result.returncode == 2 and error_line(result).startswith(f"error: {message}")


@pytest.mark.parametrize("overrides, message", [
    (["ray.num_workers=3", "ray.cpus_per_worker=1"], "ray.num_workers=3 x ray.cpus_per_worker needs 3 CPU, this "
     "machine's local Ray cluster has 2"),
    (["ray.num_workers=2", "ray.cpus_per_worker=1", "ray.placement_strategy=STRICT_SPREAD"],
     "ray.placement_strategy=STRICT_SPREAD puts each of the 2 workers on a node of its own"),
    (["ray.num_workers=4", "ray.min_workers=2", "ray.max_failures=-1", "ray.cpus_per_worker=1",
      "ray.placement_strategy=STRICT_SPREAD"], "ray.placement_strategy=STRICT_SPREAD puts each of the 2 workers"),
])
def test_a_run_the_local_cluster_cannot_place_is_refused(tiny_config, tmp_path, monkeypatch, overrides, message):
    """A cluster started here never grows: Ray would wait for the workers' placement forever. (connect() is
    stubbed as having started a 2-CPU, one-node cluster: nothing starts here.)"""
    import ray

    import distgan.launch.ray_train as ray_train

    def no_trainer(*args, **kwargs):  # a refusal that fails must not start a run (and a cluster with it)
        raise AssertionError("not refused")

    monkeypatch.setattr(ray_train, "connect", lambda cfg: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray_train, "build_trainer", no_trainer)
    cfg = tiny_config("run.mode=ray", *overrides)
    with pytest.raises(UserError, match=f"^{re.escape(message)}"):
        ray_train.run_ray(cfg)
    assert not (tmp_path / "runs" / "t").exists(), "a refused run leaves no folder"


def test_the_distgan_command_runs_each_module_and_refuses_an_unknown_one(tmp_path):
    """`distgan COMMAND` (the console script) is `python -m distgan.COMMAND`: the same one-line errors."""
    import subprocess
    import sys
    from pathlib import Path

    distgan = str(Path(sys.executable).parent / "distgan")
    version = subprocess.run([distgan, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("distgan ")
    unknown = subprocess.run([distgan, "fly"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and error_line(unknown).startswith("error: unknown command 'fly'")
    missing = subprocess.run([distgan, "prepare", str(tmp_path / "nowhere"), str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and error_line(missing) == f"error: {tmp_path / 'nowhere'} does not exist"
    bad = subprocess.run([distgan, "train", "train.steps=0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and error_line(bad).startswith("error: train.steps: must be >= 1")
