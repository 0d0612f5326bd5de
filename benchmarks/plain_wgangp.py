"""A plain PyTorch WGAN-GP loop: what a user would write in one file without distgan (the baseline of
`python -m distgan.bench`).

The same networks (distgan.models, so that only the loop differs), the same batch and n_critic, Adam, the
penalty with autograd.grad(create_graph=True), a fresh real batch per critic update from an in-memory tensor of
images on the device (the simplest fast data path a user would write). No checkpoints, no logging, no EMA.

    .venv/bin/python benchmarks/plain_wgangp.py --image-size 32 --width 16 --batch 64 --steps 50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distgan.models import Critic, Generator  # noqa: E402


def plain_step(image_size: int, width: int, z_dim: int, batch: int, n_critic: int, device: torch.device,
               images: torch.Tensor | None = None, dropout: float = 0.0, bf16: bool = False, channels: int = 3,
               fresh_real: bool = True, tf32: bool = True) -> Callable[[], None]:
    """One generator step of the plain loop, as a function (its models and optimizers built here).
    fresh_real: a fresh real batch per critic update (the paper's Algorithm 1), else one per generator step."""
    torch.manual_seed(0)
    if device.type == "cuda":  # what a tuned script sets (the GPU numbers in docs/benchmarks.md ran so)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32  # as distgan's speed.tf32
    G = Generator(z_dim, width, image_size, channels).to(device)
    D = Critic(width, image_size, channels, dropout=dropout).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.9))
    if images is None:
        images = torch.rand(4096, channels, image_size, image_size) * 2 - 1
    images = images.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        real = None
        for _ in range(n_critic):
            if real is None or fresh_real:
                real = images[torch.randint(0, len(images), (batch,), device=device)]
            with torch.no_grad(), autocast:
                fake = G(torch.randn(batch, z_dim, device=device))
            alpha = torch.rand(batch, 1, 1, 1, device=device)
            x_hat = (real + alpha * (fake.float() - real)).requires_grad_(True)
            with autocast:
                d_real, d_fake, d_hat = D(real).float(), D(fake).float(), D(x_hat).float()
            (grad,) = torch.autograd.grad(d_hat.sum(), x_hat, create_graph=True)
            gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
            loss_d = d_fake.mean() - d_real.mean() + 10.0 * gp
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        for p in D.parameters():
            p.requires_grad_(False)
        with autocast:
            loss_g = -D(G(torch.randn(batch, z_dim, device=device))).float().mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        for p in D.parameters():
            p.requires_grad_(True)

    return step


def steps_per_s(step: Callable[[], None], steps: int, warmup: int, device: torch.device,
                on_start: Callable[[], None] = lambda: None) -> float:
    """Calls of step() per second over `steps` calls, after `warmup` untimed ones; on_start() as the timing starts."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    on_start()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=64, help="a power of 2, >= 16")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--z-dim", type=int, default=128)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n-critic", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    if min(a.width, a.z_dim, a.channels, a.batch, a.n_critic, a.steps) < 1 or a.warmup < 0:
        p.error("--width, --z-dim, --channels, --batch, --n-critic and --steps must be >= 1, --warmup >= 0")
    if a.image_size < 16 or a.image_size & (a.image_size - 1):
        p.error(f"--image-size must be a power of 2, >= 16, got {a.image_size}")
    device = torch.device(a.device)
    rate = steps_per_s(plain_step(a.image_size, a.width, a.z_dim, a.batch, a.n_critic, device, bf16=a.bf16,
                                  channels=a.channels), a.steps, a.warmup, device)
    print(f"plain loop: {rate:.2f} generator steps/s, {rate * a.batch * a.n_critic:.0f} real images/s")


if __name__ == "__main__":
    main()
