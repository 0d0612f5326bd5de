"""Streaming reader: WebDataset tar shards -> batches of uint8 images, split over ranks and loader workers.

How the data is split (rank and world size are passed in explicitly, never read from torch.distributed inside a
loader worker, where a spawned worker cannot see it; DESIGN.md section 3):
- "units" are (rank, loader worker) pairs. Each epoch, the shard list is permuted with a seed shared by all ranks
  and shard i goes to unit i % units, so within an epoch no two units read the same shard. With fewer shards
  than units every unit reads every shard and keeps the samples whose index % units is its own.
- The training stream is resampled: each unit runs through its epochs forever, so every rank can take the same
  number of batches and DDP never waits for a rank that ran dry. The loop decides how many batches make an epoch.
- Order inside a unit: a shuffle buffer seeded by (seed, epoch, rank, worker), flushed at the end of each epoch,
  so a position (epoch, samples read) replays exactly: resume skips to it without decoding what it skips.
- Bad data (corrupt image, wrong size, not an image, broken tar) is skipped, counted and warned about with the
  shard's name; the count travels with every batch so the loop can log it.
"""

from __future__ import annotations

import io
import logging
import random
from typing import Iterator, Optional

import fsspec
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

log = logging.getLogger(__name__)

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def open_url(url: str):
    """Local paths, file:// and pipe: through webdataset's gopen; other schemes (s3://, gs://, ...) via fsspec."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("", "file") or url.startswith("pipe:"):
        return wds.gopen(url, "rb")
    return fsspec.open(url, "rb").open()


def decode_image(sample: dict, image_size: int, channels: int) -> np.ndarray:
    """HWC uint8 array, or raises ValueError naming what is wrong."""
    if "raw" in sample:
        arr = np.frombuffer(sample["raw"], dtype=np.uint8)
        if arr.size != image_size * image_size * channels:
            raise ValueError(f"raw image has {arr.size} bytes, expected {image_size}x{image_size}x{channels}")
        return arr.reshape(image_size, image_size, channels)
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise ValueError(f"no image in sample (members: {sorted(k for k in sample if not k.startswith('__'))})")
    with Image.open(io.BytesIO(sample[key])) as img:
        img.load()
        if img.size != (image_size, image_size):
            raise ValueError(f"image is {img.size[0]}x{img.size[1]}, expected {image_size}x{image_size}")
        arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    return arr[:, :, None] if channels == 1 else arr


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


class ShardStream(IterableDataset):
    """Yields (images uint8 (B, C, H, W), meta) where meta says where the producing unit stands."""

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
    ):
        if not urls:
            raise ValueError("no shards to read")
        self.urls = list(urls)
        self.batch_size, self.image_size, self.channels = batch_size, image_size, channels
        self.rank, self.world_size = rank, world_size
        self.num_workers = max(1, num_workers)
        self.seed, self.shuffle_buffer, self.resampled = seed, shuffle_buffer, resampled
        self.state = state or {}
        self.bad = 0

    # --- which samples a unit reads ---------------------------------------------------------------------------
    def _unit_shards(self, epoch: int, unit: int) -> tuple[list[str], Optional[int]]:
        """(shards, modulo-filter) for a unit in an epoch; the filter is set when shards < units."""
        units = self.world_size * self.num_workers
        order = list(self.urls)
        random.Random(f"{self.seed}-shards-{epoch}").shuffle(order)
        if len(order) >= units:
            return order[unit::units], None
        return order, unit

    def _raw(self, epoch: int, unit: int, worker: int) -> Iterator[dict]:
        shards, keep = self._unit_shards(epoch, unit)
        units = self.world_size * self.num_workers
        sources = ({"url": url, "stream": self._open(url)} for url in shards)
        samples = group_by_keys(tar_file_expander(sources, handler=self._on_error), handler=self._on_error)
        if keep is not None:
            samples = (s for i, s in enumerate(samples) if i % units == keep)
        rng = random.Random(f"{self.seed}-{epoch}-{self.rank}-{worker}")
        return buffer_shuffle(samples, self.shuffle_buffer, rng)

    def _open(self, url: str):
        try:
            return open_url(url)
        except Exception as exc:  # an unreadable shard is bad data, not a crash
            self._on_error(exc)
            return io.BytesIO(b"")

    def _on_error(self, exc: Exception) -> bool:
        self.bad += 1
        log.warning("skipping bad data: %s", " ".join(str(a) for a in exc.args if isinstance(a, str)) or exc)
        return True

    # --- the stream -------------------------------------------------------------------------------------------
    def __iter__(self):
        info = get_worker_info()
        physical, n = (info.id, info.num_workers) if info else (0, 1)
        assert n == self.num_workers, "num_workers must match the DataLoader's"
        # After b batches, the DataLoader's next batch comes from worker 0; rotate roles so that worker 0 plays
        # the logical worker whose turn it is (batches are taken round-robin in worker order).
        worker = (physical + self.state.get("batches", 0)) % n
        unit = self.rank * n + worker
        epoch, pos = self.state.get("workers", {}).get(worker, (0, 0))
        self.bad = self.state.get("bad", {}).get(worker, 0)
        images: list[np.ndarray] = []
        while True:
            good_in_epoch = 0
            for i, sample in enumerate(self._raw(epoch, unit, worker)):
                if i < pos:
                    continue  # replaying up to the resume position: no decoding
                try:
                    images.append(decode_image(sample, self.image_size, self.channels))
                    good_in_epoch += 1
                except Exception as exc:
                    self.bad += 1
                    log.warning("skipping bad sample %s in %s: %s", sample.get("__key__"), sample.get("__url__"), exc)
                if len(images) == self.batch_size:
                    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
                    images = []
                    yield batch, {"worker": worker, "epoch": epoch, "pos": i + 1, "bad": self.bad}
            if good_in_epoch == 0 and pos == 0:
                raise RuntimeError(f"no readable images for rank {self.rank} worker {worker} in {len(self.urls)} shards")
            if not self.resampled:
                break
            epoch, pos = epoch + 1, 0
        if images:
            batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
            yield batch, {"worker": worker, "epoch": epoch, "pos": -1, "bad": self.bad}


class RealBatches:
    """The training loop's view: next() gives a float batch in [-1, 1] on the device; state() is resumable."""

    def __init__(self, stream: ShardStream, num_workers: int, device: torch.device):
        self.device = device
        self.state = {
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
            # its own RNG: drawing the loader's base seed from the global RNG would shift the dropout masks
            generator=torch.Generator().manual_seed(stream.seed),
        )
        self._it = iter(loader)

    def __call__(self) -> torch.Tensor:
        images, meta = next(self._it)
        w = int(meta["worker"])
        self.state["batches"] += 1
        self.state["workers"][w] = (int(meta["epoch"]), int(meta["pos"]))
        self.state["bad"][w] = int(meta["bad"])
        # uint8 travels to the device; the conversion to float happens there, where it is cheap
        return images.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)

    @property
    def bad_samples(self) -> int:
        return sum(self.state["bad"].values())
