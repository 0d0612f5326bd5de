"""The training loop: one flat function, the same in one process and on every rank; the launcher gives all
outside the math."""

from __future__ import annotations

import logging
import time
from typing import Optional

import torch

from distgan.config import Config, to_yaml
from distgan.data.sources import resolve_shards
from distgan.data.stream import RealBatches, ShardStream, loader_workers
from distgan.engine.checkpoint import build_payload, check_same_model, generator_export, restore, write_export
from distgan.engine.distributed import split
from distgan.engine.flops import count_step_flops, peak_flops
from distgan.engine.health import NonFiniteWatch
from distgan.engine.launcher import Evaluate, Launcher
from distgan.engine.logger import RunLogger, grid, print_line
from distgan.engine.state import TrainState
from distgan.engine.graph_step import StaticStep, cuda_graph_refusal
from distgan.errors import Diverged

log = logging.getLogger(__name__)


@torch.no_grad()
def sample_fixed(state: TrainState, z: torch.Tensor) -> torch.Tensor:
    return state.G_ema(z).cpu()


def eval_line(step: int, results: dict[str, float]) -> str:
    return f"step {step} " + " ".join(f"{k.removeprefix('eval/')}={v:.4g}" for k, v in results.items())


def record_step_metrics(step: int, metrics: dict[str, torch.Tensor], watch: NonFiniteWatch, sums: dict[str, torch.Tensor]) -> None:
    """The NaN watch and metric sums after every train_step, with no host sync."""
    watch.observe(step, metrics)
    for k, v in metrics.items():
        sums[k] = sums.get(k, 0) + v


def best_so_far(best: dict) -> dict[str, float]:
    """The best evaluation as flat metrics: {"best/eval/fid": ..., "best/step": ...}."""
    return {f"best/{best['metric']}": best["value"], "best/step": float(best["step"])} if best else {}


def reseed_rank_state(seed: int, step: int, rank: int) -> int:
    """After a world-size change: dropout and data seeds from the step, so a resize is repeatable."""
    torch.manual_seed(hash((seed, step, rank, 1)) & 0x7FFF_FFFF_FFFF_FFFF)  # ints: hash() is stable across processes
    return reseeded_stream(seed, step)


def reseeded_stream(seed: int, step: int) -> int:
    """The data stream's seed after its layout changed at step."""
    return hash((seed, step, 2)) & 0x7FFF_FFFF


def loader_workers_for_resume(requested: int, resolved: int, saved: Optional[int]) -> tuple[int, bool]:
    """(loader workers, whether saved per-worker stream positions apply): -1 keeps the checkpoint's count."""
    if saved is None or max(1, saved) == max(1, resolved):
        return resolved, True
    return (saved, True) if requested < 0 else (resolved, False)


def train(cfg: Config, launcher: Launcher, evaluator: Optional[Evaluate] = None) -> TrainState:
    """Train to train.steps generator updates, resuming from the launcher's newest checkpoint."""
    dist, device, run_dir, store = launcher.dist, launcher.device, launcher.run_dir, launcher.checkpoints
    t, lg = cfg.train, cfg.log
    local_batch = split(t.batch_size, dist.rank, dist.world_size)[1]  # uneven shares are fine: 64 on 3 = 22+21+21
    weight = local_batch / t.batch_size  # this rank's share, for averages over ranks

    state = TrainState.create(cfg, device, dist)
    stream_seed = t.seed
    payload = store.load_latest()
    if payload is not None:
        check_same_model(payload, cfg)
        same_layout = restore(state, payload, dist)
        state.apply_hyperparameters(t)
        if same_layout:
            stream_seed = state.data_state.get("seed", t.seed)
        else:  # another world size (elastic resize): the ranks' own states cannot carry over
            stream_seed = reseed_rank_state(t.seed, state.step, dist.rank)
        if dist.is_main:
            if not same_layout:
                log.warning("checkpoint has %d ranks, this run %d: data streams re-seeded from step %d",
                            len(payload["ranks"]), dist.world_size, state.step)
            print_line(f"resumed from step {state.step} with {dist.world_size} worker{'s' if dist.world_size > 1 else ''}")
        if state.step >= t.steps:
            if dist.is_main:
                print_line(f"nothing to train: the run is at step {state.step}, train.steps={t.steps} (raise it to go on)")
            # a finished Tune trial restored: its scheduler waits for final metrics, so the checkpoint's go out again
            launcher.report(state.step, payload.get("metrics", {}))

    saved_workers = state.data_state.get("loader_workers")
    workers, positions_apply = loader_workers_for_resume(
        cfg.data.num_workers, loader_workers(cfg.data.num_workers, launcher.cpus), saved_workers)
    if not positions_apply:
        stream_seed, state.data_state = reseeded_stream(t.seed, state.step), {}
        if dist.is_main:
            log.warning("data.num_workers=%d, but the checkpoint's data stream was read by %d loader workers: the "
                        "stream restarts re-seeded from step %d (data.num_workers=-1 keeps the checkpoint's count and "
                        "resumes it exactly)", workers, saved_workers, state.step)
    stream = ShardStream(
        resolve_shards(cfg), local_batch, cfg.model.image_size, cfg.model.channels, dist.rank, dist.world_size,
        workers, stream_seed, cfg.data.shuffle_buffer, resampled=True, state=state.data_state,
    )
    key_log = run_dir / "data-keys" / f"rank-{dist.rank}.txt" if cfg.data.record_keys else None
    real = RealBatches(stream, workers, device, key_log)

    fixed_z = torch.randn(lg.num_samples, cfg.model.z_dim, generator=torch.Generator().manual_seed(t.seed + 7))
    fixed_z = fixed_z.to(device)
    logger = None
    if dist.is_main:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        logger = RunLogger(str(run_dir / "tensorboard"), t.steps, state.step, lg.progress,  # purges steps > resume
                           state.objective.progress)
        logger.config(to_yaml(cfg))
    if evaluator and state.step == 0 and cfg.eval.at_start:
        results = evaluator(state.G_ema)  # the untrained generator: where the curve starts
        if logger:
            logger.scalars(0, results)
            print_line(eval_line(0, results))

    refusal = cuda_graph_refusal(cfg, device) if state.speed.cuda_graph else None
    if refusal and dist.is_main:
        log.warning("speed.cuda_graph: %s; the step runs eagerly", refusal)
    run_step = StaticStep(state, t, dist, capture=state.speed.cuda_graph and refusal is None)
    images_per_step = t.batch_size * (t.n_critic if t.fresh_real_per_critic_step else 1)
    flops_per_step: Optional[int] = None  # this rank's model FLOPs per generator step (engine/flops.py)
    peak = peak_flops(device, state.speed.bf16, cfg.speed.tf32)
    watch = NonFiniteWatch(device, state.objective.watched)
    sums: dict[str, torch.Tensor] = {}
    steps_since, tick = 0, time.perf_counter()
    saved_on_preemption = False

    def diverged() -> bool:
        """Collective: False if all is finite, True after a rollback, else Diverged."""
        nonlocal sums, steps_since, tick
        problem = watch.check(dist)
        if problem is None:
            return False
        if t.on_nonfinite != "rollback" or state.rollbacks >= t.max_rollbacks:
            hint = ("" if t.on_nonfinite == "rollback" else
                    "; train.on_nonfinite=rollback reloads the last good checkpoint instead")
            used = f" after {state.rollbacks} rollbacks (train.max_rollbacks)" if t.on_nonfinite == "rollback" else ""
            raise Diverged(f"training diverged: {problem}{used}; no checkpoint was written after it{hint}")
        good = store.load_latest()
        if good is None:
            raise Diverged(f"training diverged: {problem}, and there is no checkpoint to roll back to")
        rollbacks = state.rollbacks + 1
        restore(state, good, dist, with_rank_state=False)  # the data streams go on: other batches this time
        run_step.invalidate()  # the optimizers' state tensors were replaced: a graph would hold the old ones
        state.apply_hyperparameters(t)
        state.rollbacks = rollbacks
        state.noise.reseed(t.seed, state.step, rollbacks)  # and other latents and alphas
        watch.reset()
        if dist.is_main:
            log.warning("%s: rolled back to step %d (rollback %d of %d)", problem, state.step, rollbacks,
                        t.max_rollbacks)
            if logger:
                logger.restart_at(state.step)
        sums, steps_since, tick = {}, 0, time.perf_counter()
        return True

    def checkpoint_now(metrics: dict[str, float], best: bool) -> None:
        state.data_state = real.state
        dist.broadcast_buffers(state.G, state.G_ema)
        dist.check_identical({"G": state.G, "D": state.D, "G_ema": state.G_ema})
        ranks = dist.gather(state.rank_state())  # every rank's data position and dropout RNG
        payload = build_payload(state, cfg, ranks, metrics)
        store.save(state.step, payload, metrics)
        if best:
            store.save_best(state.step, payload)
        if dist.is_main:
            export = generator_export(state, cfg, metrics)
            write_export(run_dir / "generators", export, lg.keep_checkpoints, best=best)

    def evaluate(step: int) -> tuple[dict[str, float], bool]:
        """Collective: the metrics, and whether they are the best so far."""
        dist.broadcast_buffers(state.G_ema)
        results = evaluator(state.G_ema)
        name, value, lower_is_better = evaluator.headline(results)
        previous = state.best.get("value")
        improved = (not state.best or state.best["metric"] != name or
                    (value < previous if lower_is_better else value > previous))
        if improved:
            state.best = {"metric": name, "value": value, "step": step}
        if dist.is_main:
            print_line(eval_line(step, results) + (" (best)" if improved else ""))
        return results, improved

    while state.step < t.steps:
        if flops_per_step is None:  # the first step of this process, under a FLOP counter
            first_step = {}
            flops_per_step = count_step_flops(state, lambda: first_step.update(metrics=run_step(real)))
            metrics = first_step["metrics"]
        else:
            metrics = run_step(real)
        record_step_metrics(state.step, metrics, watch, sums)
        state.images_seen += images_per_step
        steps_since += 1
        step, last = state.step, state.step == t.steps
        stopping = preempted = False
        if step % lg.every == 0:  # agreeing on a stop costs an all-reduce: only at log steps
            preempted = launcher.preempted() and not saved_on_preemption
            wants = launcher.should_stop()  # may be collective: every rank asks
            stopping = dist.sum_int(int(wants), device) > 0
        will_save = step % lg.checkpoint_every == 0 or last or stopping or preempted
        evaluating = evaluator is not None and cfg.eval.every > 0 and (step % cfg.eval.every == 0 or last)
        if (step % lg.every == 0 or will_save or evaluating) and diverged():
            continue

        values: dict[str, float] = {}
        if step % lg.every == 0 or last or stopping:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - tick
            values = dist.mean({k: v / steps_since for k, v in sums.items()}, weight)
            values["perf/images_per_s"] = images_per_step * steps_since / max(elapsed, 1e-9)
            values["perf/steps_per_s"] = steps_since / max(elapsed, 1e-9)
            values["perf/tflops_per_s"] = flops_per_step * values["perf/steps_per_s"] / 1e12  # per rank
            if peak:
                values["perf/mfu"] = values["perf/tflops_per_s"] * 1e12 / peak
            values["data/bad_samples"] = float(dist.sum_int(real.bad_samples, device))
            values["lr/generator"] = state.opt_g.param_groups[0]["lr"]
            values["lr/critic"] = state.opt_d.param_groups[0]["lr"]
            values["hparams/n_critic"], values["hparams/gp_weight"] = float(t.n_critic), float(t.gp_weight)
            values["dist/world_size"], values["dist/batch_per_rank"] = float(dist.world_size), float(local_batch)
            values["progress/images_seen"] = float(state.images_seen)
            if logger:
                logger.scalars(step, values)
                logger.progress(step, t.steps, values)
            sums, steps_since, tick = {}, 0, time.perf_counter()

        outside_training = time.perf_counter()  # sample grids and checkpoints: not in images/s, like evaluations
        if logger and (step % lg.sample_every == 0 or last or stopping):
            from torchvision.utils import save_image  # rank 0 only (logger.grid: why here)

            images = sample_fixed(state, fixed_z)
            logger.images(step, images)
            save_image(grid(images), run_dir / "samples" / f"step-{step:08d}.png")

        evaluated, best = {}, False
        if evaluating:
            evaluated, best = evaluate(step)
            evaluated.update(best_so_far(state.best))
            if logger:
                logger.scalars(step, evaluated)
            if not (will_save or best):
                launcher.report(step, {**values, **evaluated})  # for a scheduler (Ray Tune); a checkpoint carries it
        if will_save or best:
            checkpoint_now({**values, **evaluated}, best)
        if dist.is_main and (values or will_save):
            launcher.publish()
        tick += time.perf_counter() - outside_training  # images/s counts training time only
        if preempted:
            saved_on_preemption = True
            if dist.is_main:
                log.warning("preemption notice: checkpoint written at step %d, training on", step)
        if stopping:
            if dist.is_main:
                print_line(f"stopped at step {step} with a checkpoint")
            break

    if logger:
        logger.close()
        launcher.publish()
    return state
