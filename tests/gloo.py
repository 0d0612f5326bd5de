"""Run a function in N processes joined by a gloo process group (tests only)."""

import shutil
import tempfile
from datetime import timedelta

import torch.distributed as torch_dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, rendezvous: str, fn, args, timeout_s=None) -> None:
    timeout = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
    torch_dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world, **timeout)
    try:
        fn(rank, world, *args)
    finally:
        torch_dist.destroy_process_group()


def spawn(fn, world: int, *args, timeout_s: float | None = None) -> None:
    """fn(rank, world, *args) in `world` processes; fn must be importable (a module-level function). timeout_s:
    the process group's, so that a collective one rank never joins fails instead of hanging (gloo: 30 min).
    The ranks meet in a file, not on a port another process could take between picking it and binding it."""
    folder = tempfile.mkdtemp(prefix="gloo-")
    try:
        mp.spawn(_entry, args=(world, f"{folder}/rendezvous", fn, args, timeout_s), nprocs=world, join=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
