"""Configs load; user mistakes end with one line naming the key and exit status 2, never a traceback."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_module
from distgan.config import ConfigError, load_config


@pytest.mark.parametrize("name", ["celeba64", "paper", "demo"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.train.gp_weight == 10.0


def test_seed_and_paper_hyperparameters():
    seed, paper = (load_config(ROOT / "configs" / f"{n}.yaml") for n in ("celeba64", "paper"))
    assert (seed.train.batch_size, seed.train.lr_d, seed.train.beta1, seed.train.n_critic) == (512, 2e-4, 0.5, 3)
    assert (paper.train.batch_size, paper.train.lr_d, paper.train.beta1, paper.train.n_critic) == (64, 1e-4, 0.0, 5)
    assert seed.model.z_dim == 128 and seed.model.critic_dropout == 0.3


def test_overrides_apply_to_every_section():
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["train.n_critic=7", "model.width=4", "run.name=x",
                                                      "log.every=3", "data.shuffle_buffer=5"])
    assert (cfg.train.n_critic, cfg.model.width, cfg.run.name, cfg.log.every, cfg.data.shuffle_buffer) == (7, 4, "x", 3, 5)


BAD = [
    (["train.n_critc=3"], "train.n_critc"),  # unknown key
    (["nope=1"], "nope"),
    (["train.n_critic=three"], "train.n_critic"),  # wrong type
    (["train.n_critic=0"], "train.n_critic"),  # impossible values
    (["train.lr_g=-1e-4"], "train.lr_g"),
    (["train.lr_d=1e300"], "train.lr_d"),  # finite in Python, not in the optimizer's float32
    (["model.image_size=48"], "model.image_size"),
    (["train.batch_size=0"], "train.batch_size"),
    (["model.critic_dropout=1.5"], "model.critic_dropout"),
    (["train.steps"], "train.steps"),  # not key=value
    (["ray.num_workers=128"], "train.batch_size"),  # a global batch of 64 leaves some of 128 workers nothing
    (["ray.min_workers=3", "ray.max_failures=-1"], "ray.min_workers"),  # elastic: min > max (num_workers=2)
    (["ray.min_workers=0", "ray.max_failures=-1"], "ray.min_workers"),  # elastic: min < 1
    (["ray.min_workers=1"], "ray.max_failures"),  # elastic without restarts would end at the first lost node
    (["ray.placement_strategy=ANYWHERE"], "ray.placement_strategy"),
    (["speed.gemm_first_conv=maybe"], "speed.gemm_first_conv"),
    (["eval.metrics=swd"], "eval.metrics=[swd]"),  # a list written as a value: how to write it
    (["train=5"], "train.KEY=5"),  # a section given a value
    (["ray.address="], 'ray.address=""'),  # nothing after '=' is null to YAML: how to write an empty string
    (["train.stepz="], "Did you mean: 'steps'"),  # that hint is for string keys only
    (["train.lr_g={a:[0,1]}"], "train.lr_g={a:[0,1]}: not a YAML value: found unexpected ':' while scanning a plain "
                               "scalar (YAML wants a space after each ':' in {key: value})"),
]


@pytest.mark.parametrize("overrides,key", [
    (["run.mode=cluster"], "run.mode: must be one of local, ray"),
    (["run.mode=local", "run.root=s3://bucket/runs"], "run.root"),  # local mode writes to a path
    (["train.device=cuda", "ray.use_gpu=false"], "train.device"),  # Ray mode: one of them would be ignored
])
def test_each_launcher_checks_its_own_rules(overrides, key):
    """run.mode names a launcher (distgan/launch/); its module says what it cannot run, in one line."""
    from distgan.launch import launcher_for

    cfg = load_config(ROOT / "configs" / "demo.yaml", overrides)
    with pytest.raises(ConfigError) as err:
        launcher_for(cfg.run.mode).check(cfg)
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides,key", BAD)
def test_bad_values_raise_config_error_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "demo.yaml", overrides)
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("args,key", [
    (["train.n_critic=0"], "train.n_critic"),
    (["train.bogus=1"], "train.bogus"),
    (["model.image_size=48"], "model.image_size"),
    (["--config", "configs/missing.yaml"], "configs/missing.yaml"),
    (["data.source=/nonexistent/shards"], "data.source"),
    (["ray.min_workers=3", "ray.max_failures=-1"], "ray.min_workers"),
    (["ray.num_workers=128", "train.batch_size=64", "ray.min_workers=1", "ray.max_failures=-1"], "train.batch_size"),
    # more workers than the local Ray cluster this machine can start: refused, not an endless wait for resources
    pytest.param(["ray.num_workers=64", "model.image_size=16", "data.demo_images=64"], "ray.num_workers",
                 marks=pytest.mark.ray),
])
def test_cli_exits_2_with_one_line(args, key, tmp_path):
    result = run_module("distgan.train", *args, f"run.root={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}",
                        timeout=120, env={"RAY_ADDRESS": ""})
    assert result.returncode == 2, result.stderr
    # log records (a date first: Ray starting a local cluster, distgan's INFO lines) are not the error
    lines = [l for l in result.stderr.splitlines() if l.strip() and not re.match(r"\d{4}-\d\d-\d\d[ T]", l)]
    assert len(lines) == 1 and key in lines[0] and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("module, args", [
    ("distgan.train", ["train.n_critic=0"]),
    ("distgan.tune", ["--config", "configs/tune-demo.yaml", "search.scheduler=hyperband"]),
])
def test_config_mistakes_are_answered_before_torch_is_imported(module, args):
    """A typo in a key or value gets its one line in a fraction of a second, not after the seconds that importing
    torch and Ray takes."""
    code = ("import runpy, sys\n"
            f"sys.argv = [{module!r}, *{args!r}]\n"
            "try:\n"
            f"    runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
            "except SystemExit as exc:\n"
            "    print('exit', exc.code, 'torch imported:', 'torch' in sys.modules,\n"
            "          'ray imported:', 'ray' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stdout.split() == ["exit", "2", "torch", "imported:", "False", "ray", "imported:", "False"], \
        result.stdout + result.stderr


def test_the_training_engine_leaves_torchvision_to_the_rank_that_draws_images():
    """torchvision's package import pulls in torch._dynamo, about 3 s of CPU per process: every Ray worker and
    spawned rank imports the engine, only rank 0 saves sample grids."""
    code = "import sys, distgan.engine.loop, distgan.launch.ray_worker; print('torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False"], result.stdout + result.stderr


def test_a_config_file_must_hold_key_value_pairs(tmp_path):
    from distgan.launch.search import load_search

    listed = tmp_path / "listed.yaml"
    listed.write_text("- 1\n- 2\n")
    for load in (load_config, lambda path: load_search(path, [])):
        with pytest.raises(ConfigError, match=f"^{listed}: a config file holds key: value pairs"):
            load(str(listed))


def test_a_hint_is_given_only_where_it_leads_somewhere(tmp_path):
    """An empty value: how to write "" only for keys where "" means something (ray.address), not for data.source,
    where "" is itself refused; a list written as a value in a config file: how to write the list."""
    def message(path, *overrides) -> str:
        with pytest.raises(ConfigError) as err:
            load_config(path, list(overrides))
        return str(err.value)

    assert message(None, "data.source=") == "data.source: no value after '='"
    assert message(None, 'data.source=""').startswith("data.source: is empty: give a shard folder")
    assert message(None, "ray.address=").startswith("ray.address: no value after '=' (an empty string is written")
    as_value = tmp_path / "metrics.yaml"
    as_value.write_text("eval: {metrics: swd}\n")
    assert message(str(as_value)) == f"{as_value}: eval.metrics: a list, written metrics: [swd]"


def test_local_paths_are_made_absolute_and_the_rest_left_alone(monkeypatch, tmp_path):
    """Relative paths mean the command's folder; Ray workers run elsewhere, and a run's stored config is read from
    anywhere. Every path-valued key is made absolute (eval.source and data.cache_dir were missed in Ray mode: the
    workers then failed to find a relative eval.source the driver had checked)."""
    from distgan.config import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    here = Path.cwd()  # tmp_path with its symlinks resolved, as the working directory reports it
    keys = [("data", "source"), ("data", "cache_dir"), ("eval", "source"), ("eval", "weights"), ("run", "root")]
    relative = with_absolute_paths(load_config(None, [f"{s}.{k}=x/{s}-{k}" for s, k in keys]))
    assert [getattr(getattr(relative, s), k) for s, k in keys] == [f"{here}/x/{s}-{k}" for s, k in keys]
    # "demo" and pipe: are data sources only; a cache folder under ~ means each machine's own home
    others = with_absolute_paths(load_config(None, ["run.root=demo", "eval.weights=pipe:x", "data.cache_dir=~/c"]))
    assert (others.run.root, others.eval.weights, others.data.cache_dir) == (f"{here}/demo", f"{here}/pipe:x", "~/c")
    special = ["data.source=demo", "run.root=s3://bucket/runs"]  # eval.source and eval.weights: "" (defaults)
    kept = with_absolute_paths(load_config(None, special))
    assert (kept.data.source, kept.eval.source, kept.eval.weights, kept.run.root) == ("demo", "", "", "s3://bucket/runs")
    assert with_absolute_paths(load_config(None, ["data.source=pipe:cat x.tar"])).data.source == "pipe:cat x.tar"


def test_home_is_expanded_in_path_values(monkeypatch, tmp_path):
    """`data.source=~/shards` reaches the program with its ~ (a shell expands ~ only at a word's start or after
    an assignment's =): the config expands it, so that every reader gets the same path."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(None, ["data.source=~/shards", "eval.source=~/ref", "eval.weights=~/net.pt", "run.root=~/runs"])
    assert (cfg.data.source, cfg.eval.source, cfg.eval.weights, cfg.run.root) == (
        f"{tmp_path}/shards", f"{tmp_path}/ref", f"{tmp_path}/net.pt", f"{tmp_path}/runs")
    assert load_config(None, ["data.source=s3://bucket/~x"]).data.source == "s3://bucket/~x"


def test_an_unset_environment_variable_is_one_line():
    from distgan.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^data.source: .*Environment variable 'DISTGAN_SURELY_UNSET' not found"):
        load_config(None, ["data.source=${oc.env:DISTGAN_SURELY_UNSET}"])
