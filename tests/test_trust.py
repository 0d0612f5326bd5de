"""Files other people wrote never run code here: checkpoints, generator exports and cached statistics are read with
weights_only=True, and a config stored in a file never picks a command or a program to run."""

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL, run_module
from distgan.io.trusted_load import load_trusted


class WritesAMarker:
    """Unpickling this runs a shell command that creates a file: what a malicious .pt does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_file(path, marker, fmt: str = "distgan-generator") -> str:
    torch.save({"format": fmt, "version": 1, "step": 4, "G_ema": WritesAMarker(marker)}, path)
    return str(path)


def one_error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [l for l in result.stderr.splitlines() if l.strip() and not re.match(r"\d{4}-\d\d-\d\d[ T]", l)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.fixture
def trained_run(tiny_config, tmp_path):
    from distgan.launch.local import train_local

    cfg = tiny_config("train.steps=2", "log.checkpoint_every=2", "run.mode=local")
    train_local(cfg, tmp_path / "run")
    return tmp_path / "run"


def test_a_malicious_export_runs_nothing_in_sample_or_evaluate(tmp_path):
    marker = tmp_path / "marker"
    evil = malicious_file(tmp_path / "evil.pt", marker)
    assert not marker.exists()
    for module, args in (("distgan.sample", ["--out", str(tmp_path / "out")]), ("distgan.evaluate", [])):
        result = run_module(module, evil, *args, timeout=300)
        assert result.returncode == 2, result.stderr[-2000:]
        line = one_error_line(result)
        assert line.startswith(f"error: {evil} holds posix.system, which distgan refuses to load"), line
        assert not marker.exists(), f"{module} ran the file's code"


def test_a_malicious_checkpoint_is_refused_at_resume_not_skipped(tiny_config, trained_run, tmp_path):
    """The newest checkpoint of a run holds code: the run ends in one line naming it. It is neither run nor skipped
    for the older one, which would hide that someone wrote into the run folder."""
    from conftest import ROOT

    marker = tmp_path / "marker"
    evil = malicious_file(trained_run / "checkpoints" / "ckpt-00000004.pt", marker, "distgan-checkpoint")
    args = ["--config", str(ROOT / "configs" / "demo.yaml"), "run.mode=local", f"run.root={tmp_path}", "run.name=run",
            *TINY_MODEL, "model.critic_dropout=0.0",
            f"data.cache_dir={tiny_config().data.cache_dir}", "data.demo_images=512", "train.batch_size=16",
            "train.n_critic=2", "train.steps=6", "train.device=cpu", "eval.every=0", "log.progress=false"]
    result = run_module("distgan.train", *args, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert one_error_line(result).startswith(f"error: {evil} holds posix.system")
    assert not marker.exists()
    assert not (trained_run / "checkpoints" / "ckpt-00000006.pt").exists(), "it trained on from the older one"


def test_ray_mode_refuses_a_malicious_newest_checkpoint_on_every_rank(tmp_path, monkeypatch):
    """RayCheckpoints.load_latest (what every Ray worker calls): the newest checkpoint holds code, an older one is
    fine; the answer is UnsafeFile, never the older one."""
    import ray.train

    from distgan.engine.checkpoint import CHECKPOINT_FILE
    from distgan.engine.distributed import Dist
    from distgan.io.run_folder import RunFolder
    from distgan.errors import UnsafeFile
    from distgan.launch.ray_worker import RayCheckpoints, checkpoint_dir

    marker = tmp_path / "marker"
    for step in (2, 4):
        (tmp_path / checkpoint_dir(step)).mkdir()
    torch.save({"format": "distgan-checkpoint", "version": 1, "step": 2, "config": {}, "state": {}, "ranks": []},
               tmp_path / checkpoint_dir(2) / CHECKPOINT_FILE)
    malicious_file(tmp_path / checkpoint_dir(4) / CHECKPOINT_FILE, marker, "distgan-checkpoint")
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    with pytest.raises(UnsafeFile, match=f"{checkpoint_dir(4)}/{CHECKPOINT_FILE} holds posix.system"):
        RayCheckpoints(Dist(), RunFolder(str(tmp_path))).load_latest()
    assert not marker.exists()


def test_a_malicious_reference_statistics_cache_is_refused(trained_run, tmp_path, demo_cache):
    """Anyone who can write next to the shards can write the statistics cache: a file there that holds code ends
    the evaluation in one line (and the training run that evaluates, which reads the same cache)."""
    from distgan.data.demo import ensure_demo_shards

    shards = ensure_demo_shards(demo_cache, 16, 512)
    args = [str(trained_run), "--metrics", "swd", "--num", "32", "--data", shards, "--cache-dir", demo_cache]
    first = run_module("distgan.evaluate", *args, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    caches = sorted(Path(shards, "fid-stats").glob("*.pt"))
    assert caches, "the first evaluation cached its statistics next to the shards"
    marker = tmp_path / "marker"
    for cache in caches:
        malicious_file(cache, marker, "statistics")
    result = run_module("distgan.evaluate", *args, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert re.match(r"error: \S+/fid-stats/\w+\.pt holds posix\.system", one_error_line(result))
    assert not marker.exists()
    for cache in caches:
        cache.unlink()  # the session's other tests share these shards


def test_a_stored_pipe_source_or_network_is_never_run_by_evaluate(trained_run, tmp_path, demo_cache, tiny_features):
    """An export whose stored config reads its data through a shell command (or names a TorchScript program):
    evaluate refuses it and names the flag that would take it from the user instead."""
    from distgan.data.demo import ensure_demo_shards

    shards = ensure_demo_shards(demo_cache, 16, 512)
    marker = tmp_path / "marker"
    export = load_trusted(str(trained_run / "generators" / "generator-00000002.pt"), "export")
    export["config"]["data"]["source"] = f"pipe:touch {marker}; cat {shards}/shard-000000.tar"
    planted = tmp_path / "planted.pt"
    torch.save(export, planted)
    result = run_module("distgan.evaluate", str(planted), "--metrics", "swd", "--num", "32", timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    line = one_error_line(result)
    assert "stored data.source=pipe:touch" in line and "--data" in line, line
    assert not marker.exists(), "evaluate ran the command stored in the file"
    given = run_module("distgan.evaluate", str(planted), "--metrics", "swd", "--num", "32", "--data", shards,
                       timeout=300)
    assert given.returncode == 0 and not marker.exists(), given.stderr[-2000:]

    export["config"]["data"]["source"] = shards
    export["config"]["eval"]["weights"] = tiny_features
    torch.save(export, planted)
    result = run_module("distgan.evaluate", str(planted), "--metrics", "fid", "--num", "32", "--cache-dir",
                        demo_cache, timeout=300)
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"stored eval.weights={tiny_features}" in line and f"--weights {tiny_features}" in line, line


def test_files_written_before_trusted_loading_still_load(tiny_config, tmp_path):
    """The checkpoint format did not change: what distgan wrote before (tensors, numbers, strings, RNG states, and
    numpy arrays and scalars where a metric came from numpy) loads with weights_only=True."""
    from distgan.engine.checkpoint import build_payload, decode_payload
    from distgan.engine.distributed import Dist
    from distgan.engine.state import TrainState

    cfg = tiny_config()
    state = TrainState.create(cfg, torch.device("cpu"), Dist())
    state.best = {"metric": "eval/swd", "value": np.float64(0.25), "step": 2}
    payload = build_payload(state, cfg, [state.rank_state()], {"eval/swd": np.float32(0.5)})
    payload["ranks"][0]["data_state"] = {"workers": {0: (1, 7)}, "histogram": np.arange(4)}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    loaded = decode_payload(buffer.getvalue(), "old.pt")
    assert loaded["state"]["best"]["value"] == 0.25 and loaded["metrics"]["eval/swd"] == 0.5
    assert np.array_equal(loaded["ranks"][0]["data_state"]["histogram"], np.arange(4))
    assert torch.equal(loaded["ranks"][0]["torch_rng"], payload["ranks"][0]["torch_rng"])
    state.load_state_dict(loaded["state"])


def test_values_read_from_the_environment_are_stored_as_the_expression(tiny_config, tmp_path, demo_cache,
                                                                         monkeypatch):
    """A config that reads a secret with ${oc.env:...} (here a data path with a token in it) trains with the value,
    and stores the expression: in checkpoints, exports, TensorBoard's config text, and a search's search.json and
    best.yaml."""
    import shutil

    from distgan.data.demo import ensure_demo_shards
    from distgan.launch.local import train_local
    from distgan.launch.search import SearchConfig

    secret = "tok-5f3a9c1e"
    shards = tmp_path / f"data-{secret}"
    shutil.copytree(ensure_demo_shards(demo_cache, 16, 512), shards)
    monkeypatch.setenv("DISTGAN_TEST_SHARDS", str(shards))
    cfg = tiny_config("data.source=${oc.env:DISTGAN_TEST_SHARDS}", "train.steps=2", "log.checkpoint_every=2")
    assert cfg.data.source == str(shards)
    train_local(cfg, tmp_path / "run")
    stored = [tmp_path / "run" / "checkpoints" / "ckpt-00000002.pt", tmp_path / "run" / "generators" /
              "generator-00000002.pt", *(tmp_path / "run" / "tensorboard").glob("events.*")]
    assert len(stored) == 3
    for path in stored:
        data = path.read_bytes()
        assert secret.encode() not in data, f"{path.name} holds the value"
        assert b"${oc.env:DISTGAN_TEST_SHARDS}" in data, f"{path.name} lost the expression"
    export = load_trusted(str(stored[1]), "export")
    assert export["config"]["data"]["source"] == "${oc.env:DISTGAN_TEST_SHARDS}"

    from distgan.tune import best_config, settings

    search = SearchConfig(space={"train.lr_g": {"choice": [1e-4, 2e-4]}})
    for text in (str(settings(cfg, search)), best_config(cfg, search, {"train.lr_g": 1e-4}, 2)):
        assert secret not in text and "${oc.env:DISTGAN_TEST_SHARDS}" in text


def test_a_pickle_of_a_newer_protocol_is_refused_not_skipped(tmp_path):
    """Protocols 4 and 5 name globals with opcodes the restricted unpickler reports without a type: still a file
    that holds code, refused, and no older checkpoint taken in its place."""
    from distgan.engine.checkpoint import FolderCheckpoints, write_atomic
    from distgan.errors import UnsafeFile

    marker = tmp_path / "marker"
    write_atomic(tmp_path / "ckpt-00000001.pt", {"format": "distgan-checkpoint", "version": 1, "step": 1,
                                                  "config": {}, "state": {}, "ranks": []})
    torch.save({"x": WritesAMarker(marker)}, tmp_path / "ckpt-00000002.pt", pickle_protocol=4)
    with pytest.raises(UnsafeFile, match="ckpt-00000002.pt holds pickle instructions beyond data"):
        FolderCheckpoints(tmp_path, keep=3).load_latest()
    assert not marker.exists()


@pytest.mark.parametrize("source", [r"p\ipe:sh payload #.tar", "{pipe:sh payload,x}.tar"])
def test_a_stored_source_that_hides_pipe_in_braces_is_refused(trained_run, tmp_path, source):
    """Brace expansion turns `p\\ipe:` or `{pipe:...,x}` into a shell command: the check looks after expansion."""
    import argparse

    from distgan.errors import UserError
    from distgan.evaluate import trusted_part

    export = load_trusted(str(trained_run / "generators" / "generator-00000002.pt"), "export")
    export["config"]["data"]["source"] = source
    args = argparse.Namespace(data=None, weights=None, cache_dir=None, metrics="swd")
    with pytest.raises(UserError, match="is a command or reads the environment"):
        trusted_part(export["config"], args, "planted.pt")


@pytest.mark.parametrize("change, message", [
    (lambda e: e.pop("G_ema"), "it lacks 'G_ema'"),
    (lambda e: e["model"].update(width=1 << 20), "GiB, more than 8 GiB"),
    (lambda e: e["model"].update(image_size=7), "image_size must be a power of two"),
    (lambda e: e.update(G_ema=[1]), "Expected state_dict to be dict-like"),
])
def test_a_crafted_export_is_one_line_and_never_built_oversized(trained_run, tmp_path, change, message):
    export = load_trusted(str(trained_run / "generators" / "generator-00000002.pt"), "export")
    change(export)
    planted = tmp_path / "planted.pt"
    torch.save(export, planted)
    result = run_module("distgan.sample", str(planted), "--out", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2 and message in one_error_line(result), result.stderr[-2000:]
