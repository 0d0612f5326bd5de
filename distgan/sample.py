"""python -m distgan.sample CHECKPOINT --out DIR [--num 64] [--grid 64] [--seed 0] [--raw-generator]

Writes DIR/grid.png and DIR/000000.png ... from the EMA generator (or the raw one) of a checkpoint.
CHECKPOINT is a checkpoint file (ckpt-*.pt, or Ray mode's checkpoint_*/checkpoint.pt), a checkpoints/ folder
or a run directory of either mode (the newest checkpoint is used).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

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
    ray_checkpoint = latest_ray_checkpoint(path)
    if ray_checkpoint:
        return ray_checkpoint
    raise UserError(f"no checkpoint at {path}")


def latest_ray_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest checkpoint Ray Train registered (a folder written by a worker that died before the controller
    recorded it may be incomplete); the newest folder when there is no record."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    names = []
    if snapshot.exists():
        try:
            names = [r["checkpoint_dir_name"] for r in json.loads(snapshot.read_text())["checkpoint_results"]]
        except (ValueError, KeyError, TypeError):
            names = []
    if not names:
        names = [p.parent.name for p in run_dir.glob("checkpoint_*/checkpoint.pt")]
    found = sorted(n for n in names if (run_dir / n / "checkpoint.pt").exists())  # zero-padded: name order = step
    return run_dir / found[-1] / "checkpoint.pt" if found else None


def load_generator(path: Path, ema: bool = True, device: str = "cpu") -> torch.nn.Module:
    try:
        ckpt = load_checkpoint(path, map_location="cpu")  # optimizers and the critic stay off the GPU
        cfg = from_dict(ckpt["config"])
    except Exception as exc:
        raise UserError(f"{path} is not a distgan checkpoint: {str(exc).splitlines()[0] if str(exc) else exc}")
    G, _ = build_models(cfg.model)
    weights = ckpt["state"]["G_ema" if ema else "G"]
    try:
        G.load_state_dict(weights)  # SyncBatchNorm2d and BatchNorm2d share one state layout
    except RuntimeError as exc:
        raise UserError(f"{path}: generator weights do not fit its config: {str(exc).splitlines()[0]}") from None
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
