"""python -m distgan.sample CHECKPOINT --out DIR [--num 64] [--grid 64] [--seed 0] [--raw-generator]

Writes DIR/grid.png and DIR/000000.png ... from the EMA generator (or the raw one) of a checkpoint.
CHECKPOINT is a ckpt-*.pt file, a checkpoints/ folder or a run directory (the newest checkpoint is used).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

from distgan.cli import UserError, run_main
from distgan.config import from_dict
from distgan.engine.checkpoint import latest_checkpoint, load_checkpoint
from distgan.engine.logger import grid
from distgan.models import build_models


def find_checkpoint(path: Path) -> Path:
    """A checkpoint file, or the newest in a run folder (local mode: checkpoints/ckpt-*.pt; Ray mode:
    checkpoint_*/checkpoint.pt) or in a checkpoints/ folder."""
    if path.is_file():
        return path
    for folder in (path, path / "checkpoints"):
        found = latest_checkpoint(folder)
        if found:
            return found
    ray_checkpoints = sorted(path.glob("checkpoint_*/checkpoint.pt"))  # zero-padded step: name order is step order
    if ray_checkpoints:
        return ray_checkpoints[-1]
    raise UserError(f"no checkpoint at {path}")


def load_generator(path: Path, ema: bool = True, device: str = "cpu") -> torch.nn.Module:
    try:
        ckpt = load_checkpoint(path, map_location=device)
        cfg = from_dict(ckpt["config"])
    except Exception as exc:
        raise UserError(f"{path} is not a distgan checkpoint: {str(exc).splitlines()[0] if str(exc) else exc}")
    G, _ = build_models(cfg.model)
    weights = ckpt["state"]["G_ema" if ema else "G"]
    G.load_state_dict(weights, strict=False)  # SyncBatchNorm2d and BatchNorm2d share one state layout
    return G.to(device).eval()


@torch.no_grad()
def generate(G: torch.nn.Module, num: int, seed: int, device: str = "cpu", batch: int = 256) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(num, G.z_dim, generator=rng)
    return torch.cat([G(z[i : i + batch].to(device)).cpu() for i in range(0, num, batch)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distgan.sample", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num", type=int, default=64, help="single images to write")
    p.add_argument("--grid", type=int, default=64, help="images in grid.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw-generator", action="store_true", help="use G instead of its EMA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.num < 0 or args.grid < 1:
        raise UserError("--num must be >= 0 and --grid >= 1")
    G = load_generator(find_checkpoint(args.checkpoint), ema=not args.raw_generator, device=args.device)
    images = generate(G, max(args.num, args.grid), args.seed, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    save_image(grid(images[: args.grid]), args.out / "grid.png")
    for i in range(args.num):
        save_image(images[i].add(1).div(2).clamp(0, 1), args.out / f"{i:06d}.png")
    print(f"wrote {args.out / 'grid.png'} and {args.num} images to {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
