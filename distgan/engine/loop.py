"""The training loop: one flat function that runs the same way in one process and in every DDP rank.

Run directory layout (run.root/run.name):
    checkpoints/ckpt-<step>.pt   full state: models, optimizers, EMA, counters, RNGs, data position, config
                                 (local mode; Ray mode: checkpoint_<step>/checkpoint.pt, written by Ray Train)
    tensorboard/                 event files
    samples/step-<step>.png      fixed-latent grids from the EMA generator
    data-keys/rank-<r>.txt       with data.record_keys: the sample keys each rank trained on
Where checkpoints live and how they are found is the CheckpointStore's business, so a launcher (Ray) can swap
it without touching the loop.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch
from torchvision.utils import save_image

from distgan.config import Config, to_dict, to_yaml
from distgan.data.sources import resolve_shards
from distgan.data.stream import RealBatches, ShardStream
from distgan.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from distgan.engine.distributed import Dist
from distgan.engine.logger import RunLogger, grid, say
from distgan.engine.state import TrainState
from distgan.engine.step import train_step

log = logging.getLogger(__name__)


class CheckpointStore(Protocol):
    def latest(self) -> Optional[dict[str, Any]]: ...
    def save(self, step: int, payload: dict[str, Any], metrics: dict[str, float]) -> None: ...


class LocalCheckpoints:
    """checkpoints/ under the run directory; every rank reads the newest, rank 0 writes."""

    def __init__(self, run_dir: Path, keep: int, dist: Dist):
        self.directory, self.keep, self.dist = run_dir / "checkpoints", keep, dist

    def latest(self) -> Optional[dict[str, Any]]:
        path = latest_checkpoint(self.directory)
        return load_checkpoint(path) if path else None

    def save(self, step: int, payload: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.dist.is_main:
            save_checkpoint(self.directory, step, payload, self.keep)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))


class StopFlag:
    """SIGTERM (preemption) or Ctrl-C: finish the current step, write a checkpoint, exit cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a Ray actor's worker thread)
                pass
        return self

    def _handle(self, signum, frame):
        log.warning("signal %s: stopping after this step with a checkpoint", signum)
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@torch.no_grad()
def sample_fixed(state: TrainState, z: torch.Tensor) -> torch.Tensor:
    return state.G_ema(z).cpu()


def train(
    cfg: Config,
    run_dir: str | Path,
    dist: Optional[Dist] = None,
    store: Optional[CheckpointStore] = None,
    device: Optional[torch.device] = None,
    local_rank: int = 0,
    stop_check: Optional[Callable[[], bool]] = None,
    preempt_check: Optional[Callable[[], bool]] = None,
    publish: Optional[Callable[[], None]] = None,
) -> TrainState:
    """Train until train.steps generator updates, resuming from the store's newest checkpoint.

    stop_check: asked on every rank at each log step (a stop file); when any rank, or a SIGTERM/Ctrl-C, says
    stop, every rank writes the checkpoint and returns.
    preempt_check: asked on every rank at each log step (Ray's notice that a node will be reclaimed; every rank
    gets the same answer). The first time it says yes, a checkpoint is written at once and training goes on: the
    launcher restarts the run from that checkpoint when the node is gone. Returning early would end the run.
    publish: called on rank 0 after new TensorBoard events or sample grids were written (copies them from a local
    staging folder to object storage, distgan.engine.run_folder).
    """
    dist = dist or Dist()
    run_dir = Path(run_dir)
    device = device or pick_device(cfg.train.device, local_rank)
    store = store or LocalCheckpoints(run_dir, cfg.log.keep_checkpoints, dist)
    t, lg = cfg.train, cfg.log
    local_batch = t.batch_size // dist.world_size

    state = TrainState.create(cfg, device, dist)
    checkpoint = store.latest()
    if checkpoint is not None:
        state.load_state_dict(checkpoint["state"])
        ranks = checkpoint["ranks"]
        if len(ranks) == dist.world_size:
            state.load_rank_state(ranks[dist.rank])
        elif dist.is_main:
            log.warning("checkpoint has %d ranks, run has %d: data streams restart", len(ranks), dist.world_size)
        if dist.is_main:
            say(f"resumed from step {state.step}")

    stream = ShardStream(
        resolve_shards(cfg), local_batch, cfg.model.image_size, cfg.model.channels, dist.rank, dist.world_size,
        cfg.data.num_workers, t.seed, cfg.data.shuffle_buffer, resampled=True, state=state.data_state,
    )
    key_log = run_dir / "data-keys" / f"rank-{dist.rank}.txt" if cfg.data.record_keys else None
    real = RealBatches(stream, cfg.data.num_workers, device, key_log)

    fixed_z = torch.randn(lg.num_samples, cfg.model.z_dim, generator=torch.Generator().manual_seed(t.seed + 7))
    fixed_z = fixed_z.to(device)
    logger = None
    if dist.is_main:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        logger = RunLogger(str(run_dir / "tensorboard"), t.steps, state.step, lg.progress)  # purges steps > resume
        logger.config(to_yaml(cfg))

    images_per_step = t.batch_size * (t.n_critic if t.fresh_real_per_critic_step else 1)
    sums: dict[str, torch.Tensor] = {}
    steps_since, tick = 0, time.perf_counter()
    saved_on_preemption = False

    def checkpoint_now(metrics: dict[str, float]) -> None:
        state.data_state = real.state
        ranks = dist.gather(state.rank_state())  # every rank's data position and dropout RNG
        payload = {"state": state.state_dict(), "ranks": ranks, "config": to_dict(cfg), "step": state.step}
        store.save(state.step, payload, metrics)

    with StopFlag() as stop:
        while state.step < t.steps:
            metrics = train_step(state, real, t, dist)
            state.images_seen += images_per_step
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v
            steps_since += 1
            step, last = state.step, state.step == t.steps
            stopping = preempted = False
            if step % lg.every == 0:  # agreeing on a stop costs an all-reduce: only at log steps
                preempted = bool(preempt_check and preempt_check()) and not saved_on_preemption
                wants = bool(stop_check and stop_check()) or stop.requested  # stop_check first: it may be a barrier
                stopping = dist.sum_int(int(wants), device) > 0

            values: dict[str, float] = {}
            if step % lg.every == 0 or last or stopping:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - tick
                values = dist.mean({k: v / steps_since for k, v in sums.items()})
                values["perf/images_per_s"] = images_per_step * steps_since / max(elapsed, 1e-9)
                values["perf/steps_per_s"] = steps_since / max(elapsed, 1e-9)
                values["data/bad_samples"] = float(dist.sum_int(real.bad_samples, device))
                values["lr/generator"] = state.opt_g.param_groups[0]["lr"]
                values["lr/critic"] = state.opt_d.param_groups[0]["lr"]
                values["progress/images_seen"] = float(state.images_seen)
                if logger:
                    logger.scalars(step, values)
                    logger.progress(step, t.steps, values)
                sums, steps_since, tick = {}, 0, time.perf_counter()

            if logger and (step % lg.sample_every == 0 or last or stopping):
                images = sample_fixed(state, fixed_z)
                logger.images(step, images)
                save_image(grid(images), run_dir / "samples" / f"step-{step:08d}.png")

            if logger and publish and values:
                publish()
            if step % lg.checkpoint_every == 0 or last or stopping or preempted:
                checkpoint_now(values)
            if preempted:
                saved_on_preemption = True
                if dist.is_main:
                    log.warning("preemption notice: checkpoint written at step %d, training on", step)
            if stopping:
                if dist.is_main:
                    log.warning("stopped at step %d with a checkpoint", step)
                break

    if logger:
        logger.close()
        if publish:
            publish()
    return state
