"""python -m distgan.sample RUN_OR_FILE --out DIR [--num N] [--grid N] [--interpolate K] [--seed S]
Writes sample images from a run's newest generator export, an export or a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from distgan.cli import run_main
from distgan.io.device import torch_device
from distgan.config import expand_home
from distgan.engine.checkpoint import load_newest_generator
from distgan.engine.logger import grid
from distgan.io.run_folder import ensure_writable
from distgan.errors import UserError


@torch.no_grad()
def generate(G: torch.nn.Module, num: int, seed: int, device: str | torch.device = "cpu", batch: int = 256) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(num, G.z_dim, generator=rng)
    return torch.cat([G(z[i : i + batch].to(device)).cpu() for i in range(0, num, batch)])


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of latents a, b at fractions t: Gaussian latents lie near a sphere, which a
    straight line between two cuts inside."""
    cos = torch.dot(a, b) / (a.norm() * b.norm())
    theta = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    t = t.view(-1, 1)
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)


@torch.no_grad()
def interpolation_strips(G: torch.nn.Module, steps: int, strips: int, seed: int, device: str | torch.device) -> torch.Tensor:
    """strips x steps images, row by row."""
    rng = torch.Generator().manual_seed(seed + 1)
    ends = torch.randn(strips, 2, G.z_dim, generator=rng)
    t = torch.linspace(0, 1, steps)
    z = torch.cat([slerp(a, b, t) for a, b in ends])
    return torch.cat([G(z[i : i + 256].to(device)).cpu() for i in range(0, len(z), 256)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distgan.sample", description=__doc__.splitlines()[0])
    p.add_argument("source", metavar="RUN_OR_FILE", help="run folder, generator export or checkpoint file")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=64, help="single images to write")
    p.add_argument("--grid", type=int, default=64, help="images in grid.png")
    p.add_argument("--interpolate", type=int, metavar="K", help="images per interpolation strip (K >= 2)")
    p.add_argument("--strips", type=int, help="interpolation strips (with --interpolate; default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw-generator", action="store_true", help="use G instead of its EMA (full checkpoints only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.num < 0 or args.grid < 1:
        raise UserError("--num must be >= 0 and --grid >= 1")
    if args.strips is not None and args.interpolate is None:
        raise UserError("--strips goes with --interpolate K (the images per strip)")
    if args.interpolate is not None and (args.interpolate < 2 or (args.strips is not None and args.strips < 1)):
        raise UserError("--interpolate takes K >= 2 images per strip, --strips >= 1")
    n_strips = args.strips if args.strips is not None else 8
    device = torch_device(args.device, "--device")
    G, info, _ = load_newest_generator(expand_home(args.source), ema=not args.raw_generator)
    out = ensure_writable(Path(args.out), "--out")  # before the work, not after it (and not for a wrong source)
    G = G.to(device)
    images = generate(G, max(args.num, args.grid), args.seed, device)
    save_image(grid(images[: args.grid]), out / "grid.png")
    for i in range(args.num):
        save_image(images[i].add(1).div(2).clamp(0, 1), out / f"{i:06d}.png")
    if args.interpolate:
        strips = interpolation_strips(G, args.interpolate, n_strips, args.seed, device)
        save_image(grid(strips, nrow=args.interpolate), out / "interpolation.png")
    print(f"wrote {out / 'grid.png'} and {args.num} images from step {info['step']} to {out}"
          + (f", and {out / 'interpolation.png'}" if args.interpolate else ""))
    return 0


if __name__ == "__main__":
    run_main(main)
