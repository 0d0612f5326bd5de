"""Training reader: shards -> uint8 batches per (rank, loader worker), endless so that DDP never waits
(docs/data.md).
"""

from __future__ import annotations

import itertools
import logging
import random
import signal
from typing import Iterator, Optional
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distgan.data.codec import decode_image
from distgan.data.shards import iter_samples
from distgan.errors import DataSourceError, UnusableData

log = logging.getLogger(__name__)

__all__ = ["ShardStream", "RealBatches", "to_model_range", "decode_image", "buffer_shuffle"]


def buffer_shuffle(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    if size <= 1:
        yield from samples
        return
    buf: list[dict] = []
    for sample in samples:
        if len(buf) < size:
            buf.append(sample)
            continue
        i = rng.randrange(size)
        buf[i], sample = sample, buf[i]
        yield sample
    rng.shuffle(buf)
    yield from buf


def stack_batch(images: list[np.ndarray]) -> torch.Tensor:
    """HWC uint8 arrays -> (B, C, H, W) uint8."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def to_model_range(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 to the device, then float in [-1, 1] there, where converting is cheap."""
    return images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


def worker_error_message(exc: DataSourceError) -> str:
    """The last line of a worker's exception as the DataLoader re-raises it (docs/workarounds.md)."""
    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    return last.split(f"{type(exc).__name__}: ", 1)[-1]


class ShardStream(IterableDataset):
    """Yields (uint8 images (B, C, H, W), meta: the unit's position; keys and epochs with with_keys)."""

    def __init__(
        self,
        urls: list[str],
        batch_size: int,
        image_size: int,
        channels: int = 3,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        resampled: bool = True,
        state: Optional[dict] = None,
        with_keys: bool = False,
    ):
        if not urls:
            raise ValueError("no shards to read")
        self.urls = list(urls)
        self.batch_size, self.image_size, self.channels = batch_size, image_size, channels
        self.rank, self.world_size = rank, world_size
        self.num_workers = max(1, num_workers)
        self.seed, self.shuffle_buffer, self.resampled = seed, shuffle_buffer, resampled
        self.state = state or {}
        self.with_keys = with_keys
        self.bad = 0
        self._replaying = False  # errors met while replaying up to a resume position were counted before

    # --- which samples a unit reads ---------------------------------------------------------------------------
    def _unit_shards(self, epoch: int, unit: int) -> tuple[list[str], Optional[int]]:
        """(shards, modulo filter or None) of a unit in an epoch; the filter when shards < units."""
        units = self.world_size * self.num_workers
        order = list(self.urls)
        random.Random(f"{self.seed}-shards-{epoch}").shuffle(order)
        if len(order) >= units:
            return order[unit::units], None
        return order, unit

    def _raw(self, epoch: int, unit: int, worker: int) -> Iterator[dict]:
        shards, keep = self._unit_shards(epoch, unit)
        units = self.world_size * self.num_workers
        samples = itertools.chain.from_iterable(iter_samples(url, self._shard_error) for url in shards)
        if keep is not None:
            samples = (s for i, s in enumerate(samples) if i % units == keep)
        rng = random.Random(f"{self.seed}-{epoch}-{self.rank}-{worker}")
        return buffer_shuffle(samples, self.shuffle_buffer, rng)

    def _shard_error(self, message: str) -> None:
        if self._replaying:
            return
        self.bad += 1
        log.warning("skipping bad data: %s", message)

    def _sample_error(self, sample: dict, exc: Exception) -> None:
        self.bad += 1
        log.warning("skipping bad sample %s in %s: %s", sample.get("__key__"), sample.get("__url__"), exc)

    # --- the stream -------------------------------------------------------------------------------------------
    def __iter__(self):
        info = get_worker_info()
        physical, n = (info.id, info.num_workers) if info else (0, 1)
        assert n == self.num_workers, "num_workers must match the DataLoader's"
        # after b batches the DataLoader's next comes from worker 0 (round-robin): it plays the worker whose turn it is
        worker = (physical + self.state.get("batches", 0)) % n
        unit = self.rank * n + worker
        epoch, pos = self.state.get("workers", {}).get(worker, (0, 0))
        self.bad = self.state.get("bad", {}).get(worker, 0)
        images: list[np.ndarray] = []
        keys: list[tuple[str, int]] = []
        empty_epochs = 0
        while True:
            good_in_epoch = 0
            samples = self._raw(epoch, unit, worker)
            i = -1
            while True:
                self._replaying = i + 1 < pos
                sample = next(samples, None)
                if sample is None:
                    break
                i += 1
                if i < pos:
                    continue  # replaying up to the resume position: no decoding
                try:
                    images.append(decode_image(sample, self.image_size, self.channels))
                    keys.append((sample["__key__"], epoch))
                    good_in_epoch += 1
                except Exception as exc:
                    self._sample_error(sample, exc)
                if len(images) == self.batch_size:
                    yield stack_batch(images), self._meta(worker, epoch, i + 1, keys)
                    images, keys = [], []
            self._replaying = False
            empty_epochs = empty_epochs + 1 if good_in_epoch == 0 and pos == 0 else 0
            if not self.resampled:
                break
            if empty_epochs >= len(self.urls):
                raise UnusableData(
                    f"rank {self.rank} loader worker {worker}: no readable image in {empty_epochs} passes over its "
                    f"part of {len(self.urls)} shards (all bad, or fewer images than ranks x loader workers)")
            epoch, pos = epoch + 1, 0
        if images:
            yield stack_batch(images), self._meta(worker, epoch, -1, keys)

    def _meta(self, worker: int, epoch: int, pos: int, keys: list[tuple[str, int]]) -> dict:
        meta = {"worker": worker, "epoch": epoch, "pos": pos, "bad": self.bad}
        if self.with_keys:
            meta["keys"] = [k for k, _ in keys]
            meta["epochs"] = [e for _, e in keys]
        return meta


def loader_workers(requested: int, cpus: float) -> int:
    """data.num_workers; -1: the rank's cores minus 2, at most 8."""
    return requested if requested >= 0 else max(0, min(8, int(cpus) - 2))


def leave_ctrl_c_to_the_trainer(worker_id: int) -> None:
    """A loader worker ignores SIGINT: the trainer stops it after its final checkpoint (docs/workarounds.md)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class RealBatches:
    """The loop's view: calling it gives a float batch in [-1, 1] on the device; `state` is resumable."""

    def __init__(self, stream: ShardStream, num_workers: int, device: torch.device, key_log: Optional[Path] = None):
        """key_log: a file to append every sample key this rank trains on (data.record_keys)."""
        self.device = device
        self.key_log = key_log
        if key_log is not None:
            key_log.parent.mkdir(parents=True, exist_ok=True)
            stream.with_keys = True
        self.state = {
            "seed": stream.seed,  # the stream's order: a resume must use it again (it changes on a resize)
            "loader_workers": num_workers,  # the positions below are per loader worker: a resume needs the count
            "batches": stream.state.get("batches", 0),
            "workers": dict(stream.state.get("workers", {})),
            "bad": dict(stream.state.get("bad", {})),
        }
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None,
            worker_init_fn=leave_ctrl_c_to_the_trainer,
            # its own RNG: drawing the loader's base seed from the global RNG would shift the dropout masks
            generator=torch.Generator().manual_seed(stream.seed),
        )
        self._it = iter(loader)

    def __call__(self) -> torch.Tensor:
        try:
            images, meta = next(self._it)
        except DataSourceError as exc:
            message = worker_error_message(exc)
            exc.__traceback__ = None  # breaks the cycle of torch's re-raise (docs/workarounds.md)
            raise type(exc)(message) from None  # UnusableData stays itself: a retry would repeat it
        w = int(meta["worker"])
        self.state["batches"] += 1
        self.state["workers"][w] = (int(meta["epoch"]), int(meta["pos"]))
        self.state["bad"][w] = int(meta["bad"])
        if self.key_log is not None:
            with open(self.key_log, "a") as f:
                f.write("".join(f"{key}\n" for key in meta["keys"]))
        return to_model_range(images, self.device)

    @property
    def bad_samples(self) -> int:
        return sum(self.state["bad"].values())
