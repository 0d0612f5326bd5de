"""Reference statistics of the real data: computed once per data set by all ranks, then cached (docs/evaluation.md)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from typing import Optional

import fsspec
import torch

from distgan.config import Config
from distgan.data.demo import ensure_demo_shards
from distgan.data.shards import read_manifest
from distgan.data.sources import is_manifest_source
from distgan.data.validation import ValidationStream, validation_batches
from distgan.engine.distributed import Dist
from distgan.engine.logger import print_line
from distgan.errors import DataSourceError, UnsafeFile, first_line
from distgan.evaluation.inception import FeatureNetwork, to_uint8
from distgan.evaluation.metrics import METRICS
from distgan.evaluation.statistics import SetStatistics
from distgan.io.trusted_load import load_trusted

log = logging.getLogger(__name__)

PREPROCESSING = "uint8, tf1x-bilinear-299, (x-128)/128; swd area-16; v1"


def reference_source(cfg: Config) -> str:
    source = cfg.eval.source or cfg.data.source
    if source == "demo":
        return ensure_demo_shards(cfg.data.cache_dir, cfg.model.image_size, cfg.data.demo_images, cfg.model.channels)
    return source


def shard_folder(stream: ValidationStream) -> Optional[str]:
    """Where the shards are; None for a pipe: source (its URLs are commands)."""
    url = stream.urls[0]
    if url.startswith("pipe:"):
        return None
    return url.rsplit("/", 1)[0] if "/" in url else "."


# where fsspec's file systems keep a file's version (local: mtime; s3: ETag; gcs: generation, md5Hash; azure: etag)
VERSION_FIELDS = ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "last_modified", "updated")


def shard_versions(urls: list[str]) -> list:
    """[size, version] of each shard, from one listing per folder."""
    listings: dict[str, dict] = {}
    versions = []
    for url in urls:
        fs, path = fsspec.core.url_to_fs(url)
        folder = path.rsplit("/", 1)[0]
        if folder not in listings:
            listings[folder] = {entry["name"].rstrip("/"): entry for entry in fs.ls(folder, detail=True)}
        info = listings[folder].get(path) or fs.info(path)
        versions.append([info.get("size"), next((str(info[k]) for k in VERSION_FIELDS if info.get(k) is not None),
                                                None)])
    return versions


def data_version(source: str, urls: list[str]):
    """What tells this data set from another under the same shard names and counts (docs/evaluation.md)."""
    if source.startswith("pipe:"):
        return None
    try:
        if is_manifest_source(source):
            manifest = read_manifest(source)
            return {"created": manifest.created if manifest else None}
        return shard_versions(urls)
    except Exception as exc:
        raise DataSourceError(f"cannot list the shards of {source}: {first_line(exc)}") from None


def cache_key(cfg: Config, source: str, stream: ValidationStream, network_digest: str, keep: int) -> str:
    facts = {"urls": stream.urls, "counts": stream.counts, "version": data_version(source, stream.urls),
             "images": stream.total, "size": cfg.model.image_size, "channels": cfg.model.channels,
             "network": network_digest, "keep": keep,
             "parts": sorted({part for m in cfg.eval.metrics for part in METRICS[m].parts}),
             "preprocessing": PREPROCESSING}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def cache_locations(cfg: Config, stream: ValidationStream, key: str) -> list[str]:
    fallback = os.path.join(os.path.expanduser(cfg.data.cache_dir), "fid-stats", f"{key}.pt")
    folder = shard_folder(stream)
    return [f"{folder}/fid-stats/{key}.pt", fallback] if folder else [fallback]


def read_cache(locations: list[str]) -> tuple[Optional[dict], str]:
    """(the cached statistics, where) or (None, ""); a planted file holding code is refused."""
    for location in locations:
        try:
            fs, path = fsspec.core.url_to_fs(location)
            if fs.exists(path):
                with fs.open(path, "rb") as f:
                    return load_trusted(f.read(), location), location
        except UnsafeFile:
            raise
        except Exception as exc:
            log.warning("reference statistics at %s cannot be read (%s): recomputing", location, first_line(exc))
    return None, ""


def write_cache(locations: list[str], stats: dict) -> str:
    """Writes to the first writable location, atomically; returns it ("" if none)."""
    for location in locations:
        try:
            fs, path = fsspec.core.url_to_fs(location)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            buffer = io.BytesIO()
            torch.save(stats, buffer)
            tmp = f"{path}.{os.getpid()}.tmp"
            with fs.open(tmp, "wb") as f:
                f.write(buffer.getvalue())
            fs.mv(tmp, path)
            return location
        except Exception as exc:
            log.warning("cannot write reference statistics to %s (%s)", location, first_line(exc))
    return ""


class ReferenceCounter:
    """Reference statistics computed rather than read, counted for the tests."""

    computed = 0


def reference_statistics(cfg: Config, dist: Dist, device: torch.device, network: Optional[FeatureNetwork],
                         network_digest: str) -> dict:
    """Collective: the real data's statistics, cached or computed by all ranks; rank 0 gets them, others
    may get {}."""
    ev = cfg.eval
    source = reference_source(cfg)
    what = "eval.source" if ev.source else "data.source"
    stream = ValidationStream.from_source(source, ev.batch_size, cfg.model.image_size, cfg.model.channels,
                                          dist.rank, dist.world_size, limit=ev.num_real, what=what)
    if stream.total < 2:  # a covariance, a kernel mean, a distance between sets: none is defined for fewer
        raise DataSourceError(f"{what}: {source} holds {stream.total} images; the evaluation needs at least 2")
    keep = min(ev.num_samples, stream.total)
    if "kid" in ev.metrics and keep < ev.kid_subset_size:
        raise DataSourceError(f"{what}: {stream.total} real images, fewer than KID's subsets of eval.kid_subset_size="
                              f"{ev.kid_subset_size} (distgan.evaluate: --kid-subset-size)")
    key = cache_key(cfg, source, stream, network_digest, keep)
    locations = cache_locations(cfg, stream, key)
    cached, cached_at = read_cache(locations) if dist.is_main else (None, "")
    if dist.broadcast_object(cached is not None):
        if dist.is_main:
            print_line(f"reference statistics: {stream.total} real images, read from the cache ({cached_at})")
        return cached if dist.is_main else {}  # the metrics are computed on rank 0

    ReferenceCounter.computed += 1
    started = time.perf_counter()
    stats = SetStatistics(ev.metrics, network.num_features if network else 1, keep, device, cfg.model.channels)
    done, last_line = 0, time.perf_counter()
    index = stream.lo
    for images, valid in validation_batches(stream, device=device):
        images = images[:valid]
        features = network(to_uint8(images)) if network is not None else None
        stats.add(index, images, features)
        index += valid
        done += valid
        if dist.is_main and time.perf_counter() - last_line > 30:
            print_line(f"reference statistics: {done * dist.world_size}/{stream.total} real images (estimate)")
            last_line = time.perf_counter()
    read = dist.sum_int(done, device)
    if read < 2 or ("kid" in ev.metrics and min(read, keep) < ev.kid_subset_size):
        raise DataSourceError(f"{what}: only {read} of the {stream.total} real images in {source} could be read "
                              f"(the warnings above name the shards): too few for the evaluation")
    gathered = stats.gathered(dist)
    if dist.is_main:
        seconds = time.perf_counter() - started
        if read < stream.total:  # never cached: the key names the whole data set
            log.warning("reference statistics: %d of the %d real images could not be read: these statistics "
                        "are used now but not cached", stream.total - read, stream.total)
            print_line(f"reference statistics: {read} of {stream.total} real images in {seconds:.0f} s, not cached")
        else:
            where = write_cache(locations, gathered)
            print_line(f"reference statistics: {read} real images in {seconds:.0f} s, cached at "
                f"{where or '(nowhere writable)'}")
    return gathered
