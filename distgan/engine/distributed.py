"""Rank, world size and all-reduces on plain torch.distributed, without DDP, whose traps the penalty and the
frozen-critic generator step fall into (docs/design.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


def split(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """(first index, count) of rank's rows of `total`: the first total % world_size ranks take one more."""
    base, extra = divmod(total, world_size)
    count = base + (1 if rank < extra else 0)
    start = rank * base + min(rank, extra)
    return start, count


class ReplicaMismatch(RuntimeError):
    """The ranks' copies of a network differ (a bug, or a missing all-reduce)."""


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    sync_grads: bool = True  # False only to show that the equivalence test catches a missing all-reduce

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @staticmethod
    def from_process_group() -> "Dist":
        """Rank and world size of the default process group (none: rank 0 of 1)."""
        if torch_dist.is_available() and torch_dist.is_initialized():
            return Dist(torch_dist.get_rank(), torch_dist.get_world_size())
        return Dist(0, 1)

    def sum_grads(self, module: nn.Module) -> None:
        """Each gradient replaced by its sum over ranks (one all-reduce); losses carry each rank's batch share."""
        if not self.active or not self.sync_grads:
            return
        params = [p for p in module.parameters() if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.flatten() for p in params])
        torch_dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere: replicas start identical."""
        if not self.active:
            return
        for tensor in list(module.parameters()) + list(module.buffers()):
            torch_dist.broadcast(tensor.data, src=0)

    def mean(self, values: dict[str, torch.Tensor], weight: float) -> dict[str, float]:
        """Scalars averaged over ranks, weighted by batch share (one all-reduce), as floats."""
        keys = sorted(values)
        if not keys:
            return {}
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
        if self.active:
            stacked *= weight
            torch_dist.all_reduce(stacked)
        return dict(zip(keys, stacked.cpu().tolist()))

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In place: the tensor's sum over ranks."""
        if self.active:
            torch_dist.all_reduce(tensor)
        return tensor

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, concatenated in rank order on every rank; row counts may differ."""
        if not self.active:
            return rows
        counts = torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device)
        all_counts = [torch.zeros_like(counts) for _ in range(self.world_size)]
        torch_dist.all_gather(all_counts, counts)
        longest = int(max(c.item() for c in all_counts))
        padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, padded)
        return torch.cat([p[: int(c.item())] for p, c in zip(parts, all_counts)])

    def broadcast_object(self, obj):
        """Rank 0's small Python object on every rank."""
        if not self.active:
            return obj
        holder = [obj]
        torch_dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def sum_int(self, value: int, device: torch.device) -> int:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=device)
        torch_dist.all_reduce(t)
        return int(t.item())

    def gather(self, obj):
        """Every rank's small Python object, as a list."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, *modules: nn.Module) -> None:
        """Rank 0's buffers everywhere: without sync BN, ranks' running statistics differ."""
        if self.active:
            for module in modules:
                for buffer in module.buffers():
                    torch_dist.broadcast(buffer.data, src=0)

    def check_identical(self, modules: dict[str, nn.Module]) -> None:
        """ReplicaMismatch on every rank unless all tensors equal rank 0's bit for bit: drifted replicas go unsaved."""
        if not self.active:
            return
        differs = []
        for name, module in modules.items():
            for key, p in [*module.named_parameters(), *module.named_buffers()]:
                reference = p.detach().clone()
                torch_dist.broadcast(reference, src=0)
                if not torch.equal(reference, p.detach()):
                    differs.append(f"{name}.{key}")
        device = next(next(iter(modules.values())).parameters()).device
        if self.sum_int(len(differs), device) > 0:
            raise ReplicaMismatch(f"replicas diverged: rank {self.rank} differs from rank 0 in "
                                  f"{differs[0] if differs else '(another rank)'}; not writing the checkpoint")

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()
