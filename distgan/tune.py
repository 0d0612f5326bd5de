"""python -m distgan.tune --config configs/tune.yaml [key=value ...] [search.key=value ...]
A Ray Tune search over training keys, each trial a full Ray-mode run (docs/tune.md)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import signal
from typing import Any

from distgan.cli import run_main
from distgan.config import Config, stored_dict, to_dict, to_yaml, with_absolute_paths
from distgan.io.run_folder import RunFolder
from distgan.errors import ConfigError
from distgan.launch.search import (ClampToSpace, SearchConfig, apply_params, first_rung, load_search, pbt_mutation,
                                   scheduler_settings, tune_domain)

log = logging.getLogger("distgan.tune")


def concurrency(cfg: Config, search: SearchConfig, available: dict[str, float]) -> int:
    """Trials the free resources hold at once (Tune sees only each trial's small driver)."""
    if search.max_concurrent_trials:
        return search.max_concurrent_trials
    per_trial = cfg.ray.num_workers * cfg.ray.cpus_per_worker + search.driver_cpus
    fits = math.floor(available.get("CPU", 0) / per_trial + 1e-9)
    if cfg.ray.use_gpu:
        fits = min(fits, math.floor(available.get("GPU", 0) / cfg.ray.num_workers + 1e-9))
    return max(1, fits)


def trial_count(search: SearchConfig) -> int:
    """num_samples per point of the grid keys' product."""
    count = search.num_samples
    for spec in search.space.values():
        if isinstance(spec, dict) and "grid" in spec:
            count *= len(spec["grid"])
    return count


class Interrupts:
    """SIGTERM becomes SIGINT, on which Tune's fit() saves the search and returns (docs/workarounds.md)."""

    def __init__(self) -> None:
        self.signal = signal.SIGINT
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigint(self, signum, frame) -> None:  # before fit(), or a second Ctrl-C: stop at once
        raise KeyboardInterrupt

    def _on_sigterm(self, signum, frame) -> None:
        self.signal = signal.SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends at once
        os.kill(os.getpid(), signal.SIGINT)

    def stopped_fit(self) -> bool:
        """Whether fit() returned for an interrupt; from now on Ctrl-C and SIGTERM act at once."""
        import ray.util.client

        tune_handled_sigint = not (int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))
                                   or ray.util.client.ray.is_connected())  # Ray client: fit() ran on the cluster
        stopped = tune_handled_sigint and signal.getsignal(signal.SIGINT) == self._on_sigint
        signal.signal(signal.SIGINT, signal.default_int_handler)  # not Tune's, which would swallow a late Ctrl-C
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return stopped


def scheduler(cfg: Config, search: SearchConfig, search_dir: str):
    from ray.tune.schedulers import PopulationBasedTraining

    from distgan.launch.asha import ResumableASHA

    asha, pbt = scheduler_settings(search)
    if search.scheduler == "asha":
        return ResumableASHA(search_dir, time_attr="step", max_t=cfg.train.steps, grace_period=first_rung(cfg, asha),
                             reduction_factor=float(asha["reduction_factor"]))
    return PopulationBasedTraining(
        time_attr="step", perturbation_interval=cfg.eval.every,
        hyperparam_mutations={key: pbt_mutation(spec) for key, spec in search.space.items()},
        custom_explore_fn=ClampToSpace(search.space),
        quantile_fraction=float(pbt["quantile_fraction"]), resample_probability=float(pbt["resample_probability"]),
        synch=bool(pbt["synch"]))


def trial_rows(results, cfg: Config, search: SearchConfig) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        step = int(metrics.get("step", 0))
        status = "error" if result.error else ("completed" if step >= cfg.train.steps else "stopped early")
        params = dict(result.config or {})
        rows.append({"trial": metrics.get("trial_id", ""), "status": status, "steps": step,
                     search.metric: metrics.get(search.metric, float("nan")), **params})
    reverse = search.mode == "max"
    return sorted(rows, key=lambda r: (math.isnan(r[search.metric]), -r[search.metric] if reverse else r[search.metric]))


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)"
    keys = list(rows[0])
    text = [[k for k in keys]] + [[f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(line[i]) for line in text) for i in range(len(keys))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in text)


SETTINGS = "search.json"  # what the search was started with: a rerun resumes it only with the same
# what may change between the runs of one search: where its cluster is, how much Ray says
MAY_CHANGE = {"ray.address", "ray.log_level"}


def settings(cfg: Config, search: SearchConfig) -> dict[str, Any]:
    """The training and search settings, flat, as a resumed search must find them again."""
    flat = {f"{section}.{key}": value for section, values in stored_dict(cfg).items() for key, value in values.items()}
    flat.update({f"search.{key}": value for key, value in dataclasses.asdict(search).items()})
    return json.loads(json.dumps({key: value for key, value in flat.items() if key not in MAY_CHANGE}))  # as stored


def check_same_search(folder: RunFolder, now: dict[str, Any]) -> None:
    """Refuse a rerun with other settings: Tune would restore the search as started, under the new settings."""
    if not folder.exists(SETTINGS):
        return
    before = json.loads(folder.read_text(SETTINGS))
    differ = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if differ:
        said = ", ".join(f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise ConfigError(f"search.name={now['search.name']}: the search in {folder.location} was started with other "
                          f"settings ({said}{more}): rerun it with its own, or give another search.name")


def best_config(cfg: Config, search: SearchConfig, params: dict[str, Any], checkpoint_every: int) -> str:
    best = apply_params(cfg, params)
    best.run.name = f"{search.name}-best"
    best.log.checkpoint_every, best.log.progress = checkpoint_every, True
    return to_yaml(best)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distgan.tune", description="Search training hyperparameters.")
    p.add_argument("--config", help="a training config with a search: section (configs/tune.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value (training) and search.key=value overrides")
    args = p.parse_intermixed_args(argv)  # options and key=value in any order
    cfg, search = load_search(args.config, args.overrides)  # before torch and Ray: a mistake is reported at once

    from distgan.data.sources import resolve_shards
    from distgan.evaluation.evaluator import check_evaluation
    from distgan.launch.ray_train import (check_fits, connect, refuse_relative_root_in_job, storage_path,
                                          worker_resources)
    from distgan.launch.tune_trial import trial_driver

    refuse_relative_root_in_job(cfg)
    resolve_shards(cfg)  # every user mistake surfaces here, before any trial starts
    check_evaluation(cfg)
    checkpoint_every = cfg.log.checkpoint_every
    cfg = with_absolute_paths(cfg)
    cfg.log.checkpoint_every = cfg.eval.every  # every reported metric comes with a checkpoint (PBT, restore)
    # a PBT exploit reads the donor's checkpoint some seconds after the donor reported it: keep a few more
    cfg.log.keep_checkpoints = max(cfg.log.keep_checkpoints, 5)
    cfg.log.progress = False
    storage = storage_path(cfg) if not search.storage else (
        search.storage if "://" in search.storage else str(__import__("pathlib").Path(search.storage).absolute()))
    search_dir = f"{storage.rstrip('/')}/{search.name}"

    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from distgan.launch.asha import ResumableASHA

    experiment = f"{search_dir}/tune"
    if tune.Tuner.can_restore(experiment):  # a search Tune would resume (not one that failed before it began)
        check_same_search(RunFolder(search_dir), settings(cfg, search))  # before the cluster: one line at once
    started_here = connect(cfg)
    if started_here:
        room = dict(ray.cluster_resources())
        room["CPU"] = room.get("CPU", 0) - search.driver_cpus  # the trial's own driver takes its share first
        check_fits(worker_resources(cfg), cfg.ray.num_workers, room,
                   f" for one trial (besides its driver's search.driver_cpus={search.driver_cpus:g})")
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, base=to_dict(cfg), search={"dir": search_dir, "metric": search.metric}),
        {"CPU": search.driver_cpus})
    param_space = {key: tune_domain(spec) for key, spec in search.space.items()}
    if tune.Tuner.can_restore(experiment):
        print(f"resuming the search in {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        at_once = concurrency(cfg, search, ray.available_resources())
        print(f"{trial_count(search)} trials, at most {at_once} at a time")
        if search.scheduler == "pbt" and search.num_samples > at_once:
            log.warning("PBT with a population of %d, of which only %d fit at once: the rest wait for a free slot "
                        "and are compared with trials that have moved on", search.num_samples, at_once)
        RunFolder(search_dir).remove(ResumableASHA.RECORDS)  # a search started afresh in a folder not restorable
        RunFolder(search_dir).write_text(SETTINGS, json.dumps(settings(cfg, search), indent=1, sort_keys=True))
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=search.metric, mode=search.mode,
                                        scheduler=scheduler(cfg, search, search_dir),
                                        # the limit here: Tune ignores max_concurrent_trials with a search_alg
                                        search_alg=BasicVariantGenerator(random_state=search.seed,
                                                                         max_concurrent=at_once),
                                        num_samples=search.num_samples),
            # stop at train.steps: a final result must not start a PBT exploit that has nothing left to train
            run_config=tune.RunConfig(name="tune", storage_path=search_dir, verbose=1, stop={"step": cfg.train.steps},
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=None)),  # tiny pointers
        )
    interrupts = Interrupts()
    results = tuner.fit()
    if interrupts.stopped_fit():
        print(f"search interrupted ({interrupts.signal.name}): the same command resumes it (search state: "
              f"{experiment})")
        return 128 + interrupts.signal.value  # the shell's status (130 for Ctrl-C); no trials.csv, no best.yaml

    rows = trial_rows(results, cfg, search)
    folder = RunFolder(search_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)
    folder.write_text("trials.csv", buffer.getvalue())
    print(table(rows))
    ok = [r for r in rows if r["status"] != "error" and not math.isnan(r[search.metric])]
    if not ok:
        print(f"no trial reported {search.metric}; see {search_dir}/tune for the errors")
        return 1
    params = {k: v for k, v in ok[0].items() if k in search.space}
    folder.write_text("best.yaml", best_config(cfg, search, params, checkpoint_every))
    print(f"best: trial {ok[0]['trial']} {search.metric}={ok[0][search.metric]:.4g}; config {search_dir}/best.yaml "
          f"(python -m distgan.train --config {search_dir}/best.yaml); TensorBoard: {search_dir}/trials")
    return 0


if __name__ == "__main__":
    run_main(main)
