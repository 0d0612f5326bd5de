"""python -m distgan.evaluate RUN_OR_CHECKPOINT [--metrics fid,kid,swd] [--num N] [--data SOURCE] [--json OUT]
Sample quality of a generator (docs/evaluation.md)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from distgan.cli import run_main
from distgan.io.device import torch_device
from distgan.config import expand_home, from_dict, load_config, to_dict, validate
from distgan.engine.checkpoint import load_newest_generator
from distgan.engine.distributed import Dist
from distgan.io.run_folder import ensure_writable_file
from distgan.errors import DataSourceError, UserError


log = logging.getLogger("distgan.evaluate")
STANDARD_WEIGHTS = "standard"  # --weights standard: the standard Inception, whatever the run used

# the config keys this command's flags set: a mistake in a flag is said with the flag's name
FLAGS = {"eval.metrics": "metrics", "eval.num_samples": "num", "eval.num_real": "num_real", "eval.source": "data",
         "eval.weights": "weights", "eval.batch_size": "batch_size", "eval.kid_subset_size": "kid_subset_size",
         "data.cache_dir": "cache_dir"}


def in_flag_terms(exc: UserError, args: argparse.Namespace) -> UserError:
    """A config error said with the flag that gave the value ('--batch-size: ...')."""
    text = str(exc)
    for key, dest in FLAGS.items():
        if text.startswith(f"{key}:") and getattr(args, dest) is not None:
            return type(exc)(f"--{dest.replace('_', '-')}{text[len(key):]}")
    return exc


def runs_something(source: str) -> bool:
    """Whether a source would run a command or read the environment, also once its braces are expanded (a
    backslash or a brace can hide `pipe:` from a plain search)."""
    import braceexpand

    try:
        urls = list(braceexpand.braceexpand(source))
    except Exception:
        return True
    return "${" in source or any("pipe:" in url for url in [source, *urls])


def trusted_part(run_config: dict, args: argparse.Namespace, location: str) -> dict:
    """The stored config minus what would run code or choose where to write: a file is data, never instructions."""
    config = {section: dict(values) for section, values in run_config.items() if isinstance(values, dict)}
    data, ev = config.setdefault("data", {}), config.setdefault("eval", {})
    for section, key in (("eval", "source"), ("data", "source")):
        value = str(config[section].get(key) or "")
        if runs_something(value):
            if not args.data:
                raise UserError(f"{location}: its stored {section}.{key}={value} is a command or reads the environment;"
                                f" distgan never runs what a file says: name the reference data with --data (the same "
                                f"value, if you trust it)")
            config[section][key] = args.data  # nothing of the file's is left to run
    from distgan.evaluation.metrics import METRICS, needs_network

    metrics = [m.strip() for m in (args.metrics.split(",") if args.metrics else ev.get("metrics") or [])]
    if ev.get("weights") and not args.weights and needs_network([m for m in metrics if m in METRICS]):
        raise UserError(f"{location}: its stored eval.weights={ev['weights']} is a TorchScript program that "
                        f"evaluating would run; distgan never picks a file to execute from a file: --weights "
                        f"{ev['weights']} uses it if you trust it, --weights standard the standard Inception")
    ev.pop("weights", None)
    data.pop("cache_dir", None)  # --cache-dir, or the default
    config.pop("interpolations", None)
    return config


def build_config(run_config: dict, args: argparse.Namespace, location: str = "the file"):
    """The run's config with this command's evaluation settings on top."""
    base = to_dict(load_config(None, []))
    for section, values in trusted_part(run_config, args, location).items():
        if section in base:
            base[section].update({k: v for k, v in values.items() if k in base[section]})
    cfg = from_dict(base)
    ev = cfg.eval
    if args.metrics:
        ev.metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.num is not None:
        ev.num_samples = args.num
    if args.num_real is not None:
        ev.num_real = args.num_real
    if args.data:
        ev.source = expand_home(args.data)
    if args.weights:
        ev.weights = "" if args.weights == STANDARD_WEIGHTS else expand_home(args.weights)
    if args.batch_size is not None:
        ev.batch_size = args.batch_size
    if args.kid_subset_size is not None:
        ev.kid_subset_size = args.kid_subset_size
    ev.kid_subset_size = min(ev.kid_subset_size, ev.num_samples)
    if args.cache_dir:
        cfg.data.cache_dir = args.cache_dir
    cfg.run.mode, cfg.run.root = "local", "."  # evaluation writes no run folder; the run's own may be a URL
    try:
        validate(cfg)
    except UserError as exc:
        raise in_flag_terms(exc, args) from None
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distgan.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--metrics", help="comma-separated: fid, kid, swd (default: the run's eval.metrics)")
    p.add_argument("--num", type=int, help="generated images (default: the run's eval.num_samples)")
    p.add_argument("--num-real", type=int, help="real images for the reference statistics (0: all; default: the "
                                                "run's eval.num_real)")
    p.add_argument("--data", help="reference data set (default: the run's eval.source, else its data.source)")
    p.add_argument("--weights", help=f"feature network file (default and '{STANDARD_WEIGHTS}': the standard "
                                     f"Inception; a run's own is never taken from its file)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--kid-subset-size", type=int)
    p.add_argument("--cache-dir", help="where the demo data and uncachable statistics go (data.cache_dir; a run's "
                                       "own is never taken from its file)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.json:  # checked before the work, which can take hours: not lost to a wrong path at the end
        ensure_writable_file(args.json, "--json")
    device = torch_device(args.device, "--device")

    G, info, location = load_newest_generator(expand_home(args.source))
    cfg = build_config(info["config"], args, str(location))
    from distgan.evaluation.evaluator import Evaluator, check_evaluation

    try:
        check_evaluation(cfg)
    except DataSourceError as exc:
        if args.data or not str(exc).startswith("data.source"):
            raise in_flag_terms(exc, args) from None
        # the run's own data set is gone or moved (runs store it absolute; older runs, relative to where they ran)
        raise DataSourceError(f"{exc} (the run's data set: --data names the reference data)") from None
    except UserError as exc:  # an unknown metric: said with the flag that named it
        raise in_flag_terms(exc, args) from None
    evaluator = Evaluator(cfg, Dist(), device)
    results = evaluator(G.to(device))
    rows = [("generator", str(location)), ("step", str(info["step"])), ("generated", str(cfg.eval.num_samples)),
            ("reference", cfg.eval.source or cfg.data.source)]
    rows += [(k.removeprefix("eval/"), f"{v:.4f}" if "seconds" not in k else f"{v:.1f}") for k, v in results.items()]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.expanduser().parent.mkdir(parents=True, exist_ok=True)
        args.json.expanduser().write_text(json.dumps({"generator": str(location), "step": info["step"],
                                         "num_samples": cfg.eval.num_samples, **results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
