"""Run a function in N processes joined by a gloo process group on 127.0.0.1 (tests only)."""

import os
import socket
from datetime import timedelta

import torch.distributed as torch_dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args, timeout_s=None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    timeout = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
    torch_dist.init_process_group("gloo", rank=rank, world_size=world, **timeout)
    try:
        fn(rank, world, *args)
    finally:
        torch_dist.destroy_process_group()


def spawn(fn, world: int, *args, timeout_s: float | None = None) -> None:
    """fn(rank, world, *args) in `world` processes; fn must be importable (a module-level function). timeout_s:
    the process group's, so that a collective one rank never joins fails instead of hanging (gloo: 30 min)."""
    mp.spawn(_entry, args=(world, free_port(), fn, args, timeout_s), nprocs=world, join=True)
