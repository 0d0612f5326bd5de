"""Would a CUDA graph of the critic update pay off? One critic update, timed eagerly and replayed from a graph.

At batch 512 the seed config's step is partly bound by the host issuing its kernels (docs/benchmarks.md: the GPU
busy 35 ms per step, the step 53 ms). A CUDA graph replays a captured update with one launch. This probe answers
how much that would gain before distgan builds it in: distgan's own critic update (engine/step.py
critic_backward, then grad_norm and Adam's step, with Adam made capturable: its step count on the device) on
static input buffers, N updates eagerly and N replays of the graph, the new latents, alphas and real batch copied
into the buffers before each either way.

    python benchmarks/cuda_graph_probe.py --config configs/celeba64.yaml [key=value ...] [--updates 30] [--json OUT]

Prints ms per update both ways and the ratio, and the losses of the first updates both ways (finite, and alike:
dropout masks differ, a graph draws them from its own offsets of the same generator). On a CPU it times the
eager update only, to try the script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distgan.cli import run_main  # noqa: E402
from distgan.config import load_config  # noqa: E402
from distgan.engine.distributed import Dist  # noqa: E402
from distgan.errors import UserError  # noqa: E402
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
    p.add_argument("--updates", type=int, default=30, help="timed critic updates each way")
    p.add_argument("--json", type=Path)
    a = p.parse_intermixed_args(argv)
    if a.updates < 3:
        raise UserError("--updates must be >= 3 (the first three are shown)")
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
        loss_d, gp, wasserstein = critic_backward(state, real, z, alpha, t.gp_weight, 1.0)
        norm = grad_norm(D)
        state.opt_d.step()
        return torch.stack([loss_d.detach(), gp.detach(), wasserstein.detach(), norm])

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
    eager_losses, start = [], time.perf_counter()
    for i in range(a.updates):
        refill()
        out = update()
        if i < 3:
            eager_losses.append(out)
    sync(device)
    eager_ms = (time.perf_counter() - start) / a.updates * 1e3
    result = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "batch": batch,
              "eager_ms_per_update": eager_ms, "eager_first": [x.tolist() for x in eager_losses]}
    print(f"eager: {eager_ms:.2f} ms per critic update (loss, penalty, wasserstein, grad norm of the first: "
          f"{[round(v, 4) for v in eager_losses[0].tolist()]})")
    if not cuda:
        print("CUDA graphs need a CUDA device: eager only")
    else:
        try:
            graph = torch.cuda.CUDAGraph()
            state.opt_d.zero_grad(set_to_none=True)  # the captured backward allocates the gradients it writes
            with torch.cuda.graph(graph):
                captured = update()
        except Exception as exc:  # the answer may be "it does not capture": say why, keep the eager number
            print(f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            result["capture_error"] = f"{type(exc).__name__}: {exc}"
        else:
            graph_losses = []
            sync(device)
            start = time.perf_counter()
            for i in range(a.updates):
                refill()
                graph.replay()
                if i < 3:
                    graph_losses.append(captured.clone())
            sync(device)
            graph_ms = (time.perf_counter() - start) / a.updates * 1e3
            finite = all(bool(torch.isfinite(x).all()) for x in graph_losses)
            result.update(graph_ms_per_update=graph_ms, ratio=eager_ms / graph_ms, graph_finite=finite,
                          graph_first=[x.tolist() for x in graph_losses])
            print(f"graph: {graph_ms:.2f} ms per critic update: {eager_ms / graph_ms:.2f}x eager; first replay "
                  f"{[round(v, 4) for v in graph_losses[0].tolist()]}, all finite: {finite}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    run_main(main)
