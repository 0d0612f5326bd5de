"""python -m distgan.train [--config FILE] [key=value ...]

run.mode=ray (the default) trains with Ray Train: ray.num_workers DDP workers on the cluster named by
ray.address or RAY_ADDRESS (set by `ray job submit`), or on a local cluster started for the run.
run.mode=local trains in this process (one GPU or the CPU), with no Ray at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

from distgan.cli import config_from_args, run_main

log = logging.getLogger("distgan.train")


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(argv, "python -m distgan.train", "Train a WGAN-GP.")
    if cfg.eval.every:
        from distgan.evaluation.evaluator import check_evaluation

        check_evaluation(cfg)  # missing weights or unfit reference data: one line now, not a half-written run
    if cfg.run.mode == "local":
        from distgan.launch.local import train_local

        run_dir = Path(cfg.run.root) / cfg.run.name
        log.info("run directory: %s", run_dir.resolve())
        state = train_local(cfg, run_dir)
        log.info("done at step %d; checkpoints, samples and TensorBoard events in %s", state.step, run_dir)
    else:
        from distgan.data.sources import resolve_shards
        from distgan.launch.ray_train import run_ray

        resolve_shards(cfg)  # a wrong data.source is a one-line error here, not a traceback from every worker
        run_dir = run_ray(cfg)
        log.info("done; checkpoints, samples and TensorBoard events in %s", run_dir)
    return 0


if __name__ == "__main__":
    run_main(main)
