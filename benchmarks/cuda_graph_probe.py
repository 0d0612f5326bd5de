"""Would a CUDA graph of the critic update pay off? One critic update, timed eagerly and replayed from a graph.

At batch 512 the seed config's step is partly bound by the host issuing its kernels (docs/benchmarks.md: the GPU
busy 35 ms per step, the step 53 ms). A CUDA graph replays a captured update with one launch. This probe answers
how much that would gain before distgan builds it in: distgan's own critic update (engine/step.py
critic_backward, then grad_norm and Adam's step, with Adam made capturable: its step count on the device) on
static input buffers, N updates eagerly and N replays of the graph, the new latents, alphas and real batch copied
into the buffers before each either way.

    python benchmarks/cuda_graph_probe.py --config configs/celeba64.yaml [key=value ...] [--updates 30]
        [--rounds 2] [--json OUT]

First a check that the graph computes the update: from one saved state (the critic's weights, its Adam state, the
random generators), an eager update and a replay must give the same loss, penalty, Wasserstein estimate and
gradient norm, and leave the critic with the same weights (up to the order of floating-point sums; the dropout
masks come from the same generator state). Then ms per update both ways, in alternating rounds, and the ratio
of the best rounds. On a CPU it checks a second eager update from the saved state instead and times the eager
update only, to try the script. The JSON is written after every phase.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distgan.cli import run_main  # noqa: E402
from distgan.config import load_config  # noqa: E402
from distgan.engine.distributed import Dist  # noqa: E402
from distgan.errors import UserError, first_line  # noqa: E402
from distgan.engine.state import TrainState  # noqa: E402
from distgan.engine.step import critic_backward, grad_norm  # noqa: E402
from distgan.launch.local import pick_device  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/celeba64.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--updates", type=int, default=30, help="timed critic updates per round, each way")
    p.add_argument("--rounds", type=int, default=2, help="rounds, eager and graph alternating; the best is kept")
    p.add_argument("--json", type=Path)
    a = p.parse_intermixed_args(argv)
    if a.updates < 1 or a.rounds < 1:
        raise UserError("--updates and --rounds must be >= 1")
    cfg = load_config(a.config, ["run.mode=local", *a.overrides])
    device = pick_device(cfg.train.device)
    cuda = device.type == "cuda"
    state = TrainState.create(cfg, device, Dist())
    t, speed, D = cfg.train, state.speed, state.D
    if cuda:  # a captured Adam step must keep its step count on the device
        state.opt_d = torch.optim.Adam(D.parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2),
                                       fused=speed.fused_adam, capturable=True)
    batch, size, z_dim = t.batch_size, cfg.model.image_size, state.G.z_dim
    source = torch.rand(batch, cfg.model.channels, size, size, device=device) * 2 - 1
    real = speed.layout(source.clone())
    z, alpha = state.noise.latents(batch, z_dim), state.noise.alphas(batch)

    def refill() -> None:  # what every update needs anew: a real batch, latents, alphas
        real.copy_(source)
        z.copy_(state.noise.latents(batch, z_dim))
        alpha.copy_(state.noise.alphas(batch))

    def update() -> torch.Tensor:
        m = critic_backward(state, real, z, alpha, 1.0, 0)
        norm = grad_norm(D)
        state.opt_d.step()
        return torch.stack([m["loss/critic"].detach(), m["loss/gradient_penalty"].detach(), m["wasserstein"].detach(),
                            norm])

    # warm-up (cuDNN's algorithm search, Adam's state) on a side stream, as torch.cuda.graph's docs ask
    side = torch.cuda.Stream() if cuda else None
    if side is not None:
        side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
        for _ in range(3):
            refill()
            update()
    if side is not None:
        torch.cuda.current_stream().wait_stream(side)
    sync(device)

    # the reference: one eager update from a saved state, which a replay from the same state must reproduce
    saved = snapshot(state)
    refill()
    reference = update().clone()
    stepped = [p.detach().clone() for p in D.parameters()]  # the weights after the reference update
    restore(state, saved)
    result = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "batch": batch,
              "reference": reference.tolist()}
    print(f"eager update (loss, penalty, wasserstein, grad norm): {[round(v, 4) for v in reference.tolist()]}")

    graph, captured = None, None
    if not cuda:  # no graph: the same check of snapshot and restore with a second eager update
        refill()
        again = update()
        report_replay(result, again, reference, weights_difference(D, stepped), "a second eager update")
    else:
        try:
            graph = torch.cuda.CUDAGraph()
            state.opt_d.zero_grad(set_to_none=True)  # the captured backward allocates the gradients it writes
            with torch.cuda.graph(graph):
                captured = update()
        except Exception as exc:  # the answer may be "it does not capture": say why, keep the eager numbers
            root = innermost(exc)
            also = f" (then {type(exc).__name__}: {first_line(exc)})" if root is not exc else ""
            print(f"capture failed: {type(root).__name__}: {first_line(root)}{also}")
            result["capture_error"] = traceback.format_exc()
            graph = None
        else:
            try:
                restore(state, saved)
                refill()
                graph.replay()
                sync(device)
                report_replay(result, captured.clone(), reference, weights_difference(D, stepped),
                              "the graph's replay")
            except Exception as exc:  # the timing may still be worth having: say so, go on
                print(f"replay check failed: {type(exc).__name__}: {first_line(exc)}")
                result["replay_check_error"] = traceback.format_exc()
    save(a.json, result)

    def timed(run_one) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(a.updates):
            refill()
            run_one()
        sync(device)
        return (time.perf_counter() - start) / a.updates * 1e3

    result["eager_ms"], result["graph_ms"] = [], []
    for _ in range(a.rounds):  # alternating, so that a slow stretch of the machine does not favour one way
        result["eager_ms"].append(timed(update))
        save(a.json, result)
        if graph is not None:
            result["graph_ms"].append(timed(graph.replay))
            save(a.json, result)
    eager_ms = min(result["eager_ms"])
    print(f"eager: {eager_ms:.2f} ms per critic update (best of {a.rounds} rounds of {a.updates})")
    if graph is not None:
        graph_ms = min(result["graph_ms"])
        result["ratio"] = eager_ms / graph_ms
        print(f"graph: {graph_ms:.2f} ms per critic update: {eager_ms / graph_ms:.2f}x eager")
    elif not cuda:
        print("CUDA graphs need a CUDA device: eager only")
    save(a.json, result)
    return 0


def snapshot(state: TrainState) -> dict:
    """The critic's weights, its Adam state and the random generators: what one critic update reads."""
    return {
        "params": [p.detach().clone() for p in state.D.parameters()],
        "adam": [{k: v.clone() if torch.is_tensor(v) else v for k, v in state.opt_d.state[p].items()}
                 for p in state.D.parameters()],
        "noise": state.noise.rng.get_state(), "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


@torch.no_grad()
def restore(state: TrainState, saved: dict) -> None:
    """Back to the snapshot, in place: a captured graph reads and writes these very tensors."""
    for p, value, adam in zip(state.D.parameters(), saved["params"], saved["adam"]):
        p.copy_(value)
        for k, v in adam.items():
            if torch.is_tensor(v):
                state.opt_d.state[p][k].copy_(v)
    state.noise.rng.set_state(saved["noise"])
    torch.set_rng_state(saved["cpu_rng"])
    if saved["cuda_rng"] is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"])


def weights_difference(critic: torch.nn.Module, reference: list[torch.Tensor]) -> float:
    """The largest relative difference between the critic's weights and the reference update's, per tensor."""
    return max(((p - r).abs().max() / r.abs().max().clamp_min(1e-12)).item()
               for p, r in zip(critic.parameters(), reference))


def report_replay(result: dict, out: torch.Tensor, reference: torch.Tensor, weights: float, what: str) -> None:
    """How far a rerun of the update from the saved state is from the reference: its values (relative, each)
    and the critic's weights after it (Adam's step included)."""
    difference = ((out - reference).abs() / reference.abs().clamp_min(1e-6)).max().item()
    result.update(replay=out.tolist(), replay_relative_difference=difference, replay_weights_difference=weights)
    print(f"{what} from the same state: {[round(v, 4) for v in out.tolist()]}, relative difference "
          f"{difference:.1e}; weights after it {weights:.1e} from the eager update's")


def innermost(exc: BaseException) -> BaseException:
    """The first error of a chain (a failed capture's own error is followed by the one ending the capture)."""
    seen = [exc]
    while (seen[-1].__cause__ or seen[-1].__context__) is not None and len(seen) < 10:
        seen.append(seen[-1].__cause__ or seen[-1].__context__)
    return seen[-1]


def save(path: Path | None, result: dict) -> None:
    """After every phase: a run cut short by its timeout keeps what it measured."""
    if path:
        path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    run_main(main)
