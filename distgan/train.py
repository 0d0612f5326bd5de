"""python -m distgan.train [--config FILE] [key=value ...]
run.mode=ray (default): DDP workers under Ray Train; run.mode=local: this process, no Ray."""

from __future__ import annotations

import logging
import signal
from typing import Optional

from distgan.cli import config_from_args, run_main

log = logging.getLogger("distgan.train")


def main(argv: list[str] | None = None) -> int:
    # torch and Ray are imported only after the config is read: a mistake in it is reported at once
    cfg = config_from_args(argv, "python -m distgan.train", "Train a WGAN-GP.")
    from distgan.launch import launcher_for
    from distgan.objectives import build_objective

    launcher = launcher_for(cfg.run.mode)  # an unknown run.mode or objective is one line here, not in every worker
    launcher.check(cfg)
    build_objective(cfg.train)
    if cfg.eval.every:
        from distgan.evaluation.evaluator import check_evaluation

        check_evaluation(cfg)  # missing weights or unfit reference data: one line now, not a half-written run
    run_dir, step, metrics, stop_signal = launcher.run(cfg)
    stopped = stop_signal is not None and (step is None or step < cfg.train.steps)
    step = cfg.train.steps if step is None and not stopped else step
    print(summary(run_dir, step, metrics, cfg.train.steps, stop_signal if stopped else None))
    # stopped before train.steps: the shell's status for the signal (130, 143), so `train && evaluate` stops
    return 128 + stop_signal if stopped else 0


def summary(run_dir: str, step: Optional[int], metrics: dict, steps: int, stop_signal: Optional[int] = None) -> str:
    """Where the run is and its best evaluation; step None: stopped before any report."""
    if stop_signal is None:
        lines = [f"done at step {step}: {run_dir}"]
    else:
        at = f"at step {step} of {steps}" if step is not None else f"before its first report (of {steps} steps)"
        lines = [f"stopped {at} ({signal.Signals(stop_signal).name}): {run_dir}",
                 "  the same command resumes from its newest checkpoint"]
    best = {k.removeprefix("best/eval/"): v for k, v in metrics.items() if k.startswith("best/eval/")}
    for name, value in best.items():
        lines.append(f"  best {name} {value:.4g} at step {int(metrics['best/step'])} (generators/generator-best.pt)")
    lines.append(f"  samples/  generators/  tensorboard/   tensorboard --logdir {run_dir}/tensorboard")
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
