"""Evaluation reader: each image once over ranks and loader workers, equal batch counts so collectives stay in step."""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distgan.data.codec import decode_image
from distgan.data.shards import iter_samples
from distgan.data.sources import check_manifest, resolve_source, shard_counts
from distgan.data.stream import stack_batch, to_model_range

log = logging.getLogger(__name__)


class ValidationStream(IterableDataset):
    """Yields (uint8 images (batch_size, C, H, W), meta "valid", "bad", "keys"); len(): batches per rank."""

    def __init__(
        self,
        urls: list[str],
        counts: list[int],
        batch_size: int,
        image_size: int,
        channels: int = 3,
        rank: int = 0,
        world_size: int = 1,
        with_keys: bool = False,
        limit: int = 0,
    ):
        """limit: only the first `limit` images (in shard order); 0 = all."""
        if len(urls) != len(counts):
            raise ValueError(f"{len(urls)} shards but {len(counts)} counts")
        self.urls, self.counts = list(urls), [int(c) for c in counts]
        self.starts = [0, *itertools.accumulate(self.counts)]  # first image number of each shard, then the total
        self.total = min(self.starts[-1], limit) if limit else self.starts[-1]
        self.batch_size, self.image_size, self.channels = batch_size, image_size, channels
        self.rank, self.world_size, self.with_keys = rank, world_size, with_keys
        self.lo = rank * self.total // world_size  # this rank's images: [lo, hi)
        self.hi = (rank + 1) * self.total // world_size
        self.batches = math.ceil(math.ceil(self.total / world_size) / batch_size)

    @classmethod
    def from_source(cls, source: str, batch_size: int, image_size: int, channels: int = 3, rank: int = 0,
                    world_size: int = 1, with_keys: bool = False, limit: int = 0,
                    what: str = "data.source") -> "ValidationStream":
        """From a shard folder, manifest.json or brace-expanded URLs (counted once when there is no manifest)."""
        urls, manifest = resolve_source(source, what)
        if manifest is not None:
            check_manifest(manifest, image_size, channels, what)
        counts = shard_counts(urls, manifest, what)
        return cls(urls, counts, batch_size, image_size, channels, rank, world_size, with_keys,
                   limit)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        info = get_worker_info()
        worker, n = (info.id, info.num_workers) if info else (0, 1)
        first, last = worker * self.batches // n, (worker + 1) * self.batches // n  # this worker's batches
        lo = min(self.lo + first * self.batch_size, self.hi)
        hi = min(self.lo + last * self.batch_size, self.hi)
        current = first
        images: list[np.ndarray] = []
        keys: list[str] = []
        for number, sample in self._numbered_samples(lo, hi):
            while current < (number - self.lo) // self.batch_size:
                yield self._batch(current, images, keys)
                images, keys, current = [], [], current + 1
            try:
                images.append(decode_image(sample, self.image_size, self.channels))
                keys.append(sample["__key__"])
            except Exception as exc:
                log.warning("skipping bad sample %s in %s: %s", sample.get("__key__"), sample.get("__url__"), exc)
        while current < last:
            yield self._batch(current, images, keys)
            images, keys, current = [], [], current + 1

    def _numbered_samples(self, lo: int, hi: int) -> Iterator[tuple[int, dict]]:
        """(image number, sample) for numbers in [lo, hi), reading only the shards holding them."""
        if lo >= hi:
            return
        for s in range(bisect.bisect_right(self.starts, lo) - 1, len(self.urls)):
            start, count, url = self.starts[s], self.counts[s], self.urls[s]
            if start >= hi:
                break
            seen = 0
            for k, sample in enumerate(iter_samples(url, lambda message: log.warning("bad data: %s", message))):
                seen = k + 1
                if k >= count:
                    log.warning("%s has more samples than the %d its count says: ignoring the rest", url, count)
                    break
                if start + k >= hi:
                    break
                if start + k >= lo:
                    yield start + k, sample
            if seen < count and start + seen < hi:
                log.warning("%s ends after %d of its %d samples", url, seen, count)

    def _batch(self, index: int, images: list[np.ndarray], keys: list[str]) -> tuple[torch.Tensor, dict]:
        """Batch `index`, padded with black images; meta["bad"] counts the images it should have held."""
        batch = torch.zeros(self.batch_size, self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        if images:
            batch[: len(images)] = stack_batch(images)
        expected = max(0, min(self.batch_size, self.hi - self.lo - index * self.batch_size))
        meta = {"valid": len(images), "bad": expected - len(images)}
        if self.with_keys:
            meta["keys"] = list(keys)
        return batch, meta


def validation_batches(stream: ValidationStream, num_workers: int = 0, device: Optional[torch.device] = None,
                       multiprocessing_context: Optional[str] = None) -> Iterator[tuple[torch.Tensor, int]]:
    """(float images in [-1, 1] on the device, valid count) per batch of the rank."""
    device = device or torch.device("cpu")
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=device.type == "cuda",
                        multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
                        generator=torch.Generator())  # its own RNG: the global one drives training's dropout
    bad = 0
    for images, meta in loader:
        bad += int(meta["bad"])
        yield to_model_range(images, device), int(meta["valid"])
    if bad:
        log.warning("validation: %d images skipped as bad data on rank %d", bad, stream.rank)
