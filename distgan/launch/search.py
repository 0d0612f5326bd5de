"""The `search:` section of a tune config (docs/tune.md), checked up front: a mistake is one line before any trial."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import OmegaConf

from distgan.config import Config, config_from_mapping, read_mapping, to_dict, unparsable_value
from distgan.errors import ConfigError, first_line

KINDS = ("choice", "uniform", "loguniform", "grid")
SCHEDULERS = ("asha", "pbt")
# what PBT may change in a running trial: applied to the live optimizers and step schedule after an exploit
PBT_MUTABLE = ("train.lr_g", "train.lr_d", "train.beta1", "train.beta2", "train.n_critic", "train.gp_weight")
# the search's schedule, the same for every trial (rungs, PBT's interval, max_t): never searched
SCHEDULE_KEYS = ("eval.every", "log.checkpoint_every", "train.steps")
COMBINATIONS_CHECKED = 4096  # at most this many combinations of the space's values are validated together
# the schedulers' settings (search.asha, search.pbt) and their defaults
ASHA_DEFAULTS = {"grace_period": 0, "reduction_factor": 2}
PBT_DEFAULTS = {"quantile_fraction": 0.5, "resample_probability": 0.25, "synch": False}


@dataclass
class SearchConfig:
    name: str = "search"
    storage: str = ""
    num_samples: int = 4
    scheduler: str = "asha"
    metric: str = "eval/fid"
    mode: str = "min"
    max_concurrent_trials: int = 0
    driver_cpus: float = 0.1
    seed: Optional[int] = None  # the sampling of trial values (None: different every search)
    space: dict = field(default_factory=dict)
    asha: dict = field(default_factory=dict)
    pbt: dict = field(default_factory=dict)


def scheduler_settings(s: "SearchConfig") -> tuple[dict, dict]:
    """(asha, pbt): the defaults under the search's own settings."""
    return {**ASHA_DEFAULTS, **s.asha}, {**PBT_DEFAULTS, **s.pbt}


def first_rung(cfg: Config, asha: dict) -> int:
    """ASHA's first rung: its grace period, but not before the first evaluation."""
    return max(cfg.eval.every, int(asha["grace_period"]))


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(training overrides, search overrides without the "search." prefix)."""
    train, search = [], []
    for item in overrides:
        (search if item.startswith("search.") else train).append(item.removeprefix("search."))
    return train, search


def load_search(path: str | None, overrides: list[str]) -> tuple[Config, SearchConfig]:
    """A tune config: its training config (validated as for train) and search section."""
    train_overrides, search_overrides = split_overrides(overrides)
    mapping = read_mapping(path) if path is not None else OmegaConf.create({})
    search_raw = mapping.pop("search", None) or {}
    cfg = config_from_mapping(mapping, str(path), train_overrides)
    # search.space.train.lr_g={...}: the space's keys are dotted training keys, not nested sections
    space_overrides = [o.removeprefix("space.") for o in search_overrides if o.startswith("space.")]
    search_overrides = [o for o in search_overrides if not o.startswith("space.")]
    for item in search_overrides:  # a value YAML cannot read, named with its key (the merge below cannot)
        try:
            OmegaConf.from_dotlist([item])
        except Exception as exc:
            raise unparsable_value(f"search.{item}", exc) from None
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SearchConfig), search_raw,
                                 OmegaConf.from_dotlist(search_overrides))
        search: SearchConfig = OmegaConf.to_object(merged)
    except Exception as exc:
        key = getattr(exc, "full_key", "")
        raise ConfigError(f"search.{key}: {str(exc).splitlines()[0]}" if key else f"search: {first_line(exc)}") \
            from None
    for item in space_overrides:
        key, _, value = item.partition("=")
        try:
            search.space[key] = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]))["v"]
        except Exception as exc:
            raise unparsable_value(f"search.space.{item}", exc) from None
    validate_search(cfg, search)
    return cfg, search


def validate_search(cfg: Config, s: SearchConfig) -> None:
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"search.{key}: {msg}")

    need(bool(s.name) and "/" not in s.name, "name", f"must be a non-empty name without '/', got {s.name!r}")
    need(s.num_samples >= 1, "num_samples", f"must be >= 1, got {s.num_samples}")
    need(s.scheduler in SCHEDULERS, "scheduler", f"must be one of {SCHEDULERS}, got {s.scheduler!r}")
    need(s.mode in ("min", "max"), "mode", f"must be min or max, got {s.mode!r}")
    need(s.max_concurrent_trials >= 0, "max_concurrent_trials", f"must be >= 0, got {s.max_concurrent_trials}")
    need(s.driver_cpus > 0, "driver_cpus", f"must be > 0, got {s.driver_cpus}")
    produced = [f"eval/{m}" for m in cfg.eval.metrics]
    need(s.metric in produced, "metric",
         f"{s.metric!r} is not reported: trials report {produced} (eval.metrics), every eval.every steps")
    if cfg.eval.every == 0:
        raise ConfigError("eval.every: a search needs evaluations to rank trials by; set eval.every > 0")
    need(bool(s.space), "space", "is empty: name at least one training key to search over")
    known = to_dict(cfg)
    for key, spec in s.space.items():
        parts = key.split(".")
        section = known.get(parts[0]) if len(parts) == 2 else None
        need(isinstance(section, dict) and parts[1] in section, f"space.{key}", "is not a training config key")
        need(parts[0] not in ("run",), f"space.{key}", "run.* cannot be searched (each trial has its own folder)")
        need(key not in SCHEDULE_KEYS, f"space.{key}", "is the search's schedule, the same for every trial (rungs, "
                                                      "PBT's interval and the checkpoints are at the base value)")
        check_domain(f"space.{key}", spec, need)
        base = section[parts[1]]
        need(not (isinstance(spec, dict) and next(iter(spec)) in ("uniform", "loguniform") and isinstance(base, int)),
             f"space.{key}", f"{next(iter(spec)) if isinstance(spec, dict) else ''} samples floats, and {key} takes "
                             f"{type(base).__name__} values: use choice")
        check_values(cfg, key, spec)
    check_combinations(cfg, s.space)
    unknown = set(s.asha) - set(ASHA_DEFAULTS)
    need(not unknown, "asha", f"unknown keys {sorted(unknown)}")
    unknown = set(s.pbt) - set(PBT_DEFAULTS)
    need(not unknown, "pbt", f"unknown keys {sorted(unknown)}")
    asha, pbt = scheduler_settings(s)
    # the schedulers' own checks would be a traceback after the search has started
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    checks = [("asha.grace_period", asha["grace_period"], lambda v: number(v) and v >= 0 and v == int(v),
               "an integer >= 0"),
              ("asha.reduction_factor", asha["reduction_factor"], lambda v: number(v) and v > 1,
               "a number > 1"),
              ("pbt.quantile_fraction", pbt["quantile_fraction"], lambda v: number(v) and 0 <= v <= 0.5,
               "a number in [0, 0.5]"),
              ("pbt.resample_probability", pbt["resample_probability"],
               lambda v: number(v) and 0 <= v <= 1, "a number in [0, 1]"),
              ("pbt.synch", pbt["synch"], lambda v: isinstance(v, bool), "true or false")]
    for key, value, ok, what in checks:
        need(ok(value), key, f"must be {what}, got {value!r}")
    if s.scheduler == "asha":
        rung = first_rung(cfg, asha)
        need(rung <= cfg.train.steps, "asha.grace_period",
             f"ASHA's first rung, at step {rung} (the larger of eval.every and search.asha.grace_period), is "
             f"past train.steps={cfg.train.steps}")
    if s.scheduler == "pbt":
        need(cfg.eval.every < cfg.train.steps, "pbt",
             f"PBT exploits at the evaluations before the last step: eval.every={cfg.eval.every} must be below "
             f"train.steps={cfg.train.steps}")
        for key in s.space:
            need(key in PBT_MUTABLE, f"space.{key}",
                 f"PBT can only mutate {', '.join(PBT_MUTABLE)} in a live run (search it with asha instead)")
            need(isinstance(s.space[key], dict) and "grid" not in s.space[key], f"space.{key}",
                 "PBT needs a choice, uniform or loguniform domain to resample from (not grid, not a value)")


def check_domain(where: str, spec: Any, need) -> None:
    if not isinstance(spec, dict):
        return  # a plain value: the same in every trial
    need(len(spec) == 1 and next(iter(spec)) in KINDS, where, f"must be a value or one of {{{', '.join(KINDS)}: ...}}")
    kind, values = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        need(isinstance(values, list) and len(values) > 0, where, f"{kind} needs a non-empty list")
        return
    need(isinstance(values, list) and len(values) == 2 and all(isinstance(v, (int, float)) for v in values), where,
         f"{kind} needs [low, high]")
    low, high = values
    need(math.isfinite(low) and math.isfinite(high) and low < high, where, f"{kind} needs low < high, got {values}")
    need(kind != "loguniform" or low > 0, where, f"loguniform needs low > 0, got {low}")


def check_values(cfg: Config, key: str, spec: Any) -> None:
    """Every value a trial can get for key is valid: one line now, not failed trials later."""
    if not isinstance(spec, dict):
        values = [spec]
    else:
        values = next(iter(spec.values()))
    for value in values:
        try:
            apply_params(cfg, {key: value})
        except ConfigError as exc:
            raise ConfigError(f"search.space.{key}: {value!r} is not a valid value: {exc}") from None
        except Exception as exc:  # the config's types (a string for a float key)
            raise ConfigError(f"search.space.{key}: {value!r} is not a valid value: {first_line(exc)}") from None


def corner_values(spec: Any) -> list:
    """A space entry's values that stand for all of it (each value, both bounds)."""
    return next(iter(spec.values())) if isinstance(spec, dict) else [spec]


def check_combinations(cfg: Config, space: dict) -> None:
    """Every combination of corner values (up to COMBINATIONS_CHECKED) is valid together, e.g. batch >= workers."""
    keys = list(space)
    if len(keys) < 2:
        return
    for combination in itertools.islice(itertools.product(*(corner_values(space[k]) for k in keys)),
                                        COMBINATIONS_CHECKED):
        params = dict(zip(keys, combination))
        try:
            apply_params(cfg, params)
        except ConfigError as exc:
            values = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ConfigError(f"search.space: a trial could get {values}, which training refuses: {exc}") from None


def pbt_mutation(spec: Any):
    """A space entry as PBT's mutation: a choice as its list (a Ray domain would be scaled off it)."""
    kind, values = next(iter(spec.items()))
    return list(values) if kind == "choice" else tune_domain(spec)


class ClampToSpace:
    """PBT's custom_explore_fn: perturbed values back into [low, high] (1.2 x beta2 0.9 is refused)."""

    def __init__(self, space: dict):
        self.ranges = {key: next(iter(spec.values())) for key, spec in space.items()
                       if isinstance(spec, dict) and next(iter(spec)) in ("uniform", "loguniform")}

    def __call__(self, config: dict) -> dict:
        for key, (low, high) in self.ranges.items():
            if key in config:
                config[key] = min(max(config[key], low), high)
        return config


def tune_domain(spec: Any):
    """A search.space entry as a Ray Tune domain."""
    from ray import tune

    if not isinstance(spec, dict):
        return spec
    kind, values = next(iter(spec.items()))
    if kind == "choice":
        return tune.choice(values)
    if kind == "grid":
        return tune.grid_search(values)
    if kind == "uniform":
        return tune.uniform(*values)
    return tune.loguniform(*values)


def apply_params(cfg: Config, params: dict[str, Any]) -> Config:
    """A trial's config: the base config with the sampled values, validated."""
    from distgan.config import from_dict, validate

    data = to_dict(cfg)
    for key, value in params.items():
        section, name = key.split(".")
        data[section][name] = value
    trial = from_dict(data)
    validate(trial)
    return trial
