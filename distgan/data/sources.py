"""data.source -> shard URLs; a wrong source of any kind ends here, as a one-line DataSourceError."""

from __future__ import annotations

from typing import Optional

import braceexpand
import fsspec

from distgan.config import Config
from distgan.data.demo import ensure_demo_shards
from distgan.errors import DataSourceError, first_line
from distgan.data.shards import MANIFEST, Manifest, count_samples, read_manifest


def is_manifest_source(source: str) -> bool:
    """A folder or manifest.json, not shard URLs: no brace pattern, not a .tar, not pipe:."""
    if source.startswith("pipe:"):
        return False
    return source.endswith(".json") or ("{" not in source and not source.endswith((".tar", ".tar.gz", ".tgz")))


def manifest_folder(source: str) -> str:
    """The folder of a manifest source: itself, or the folder of a .../manifest.json."""
    if not source.endswith(".json"):
        return source
    return source.rsplit("/", 1)[0] if "/" in source else "."


def resolve_source(source: str, what: str = "data.source") -> tuple[list[str], Optional[Manifest]]:
    """(shard URLs, manifest or None) for a shard folder, manifest.json or brace-expanded URLs."""
    if source.startswith("pipe:"):
        return list(braceexpand.braceexpand(source)), None  # commands: nothing to check before running them
    manifest = None
    try:
        if is_manifest_source(source):
            manifest = read_manifest(source)
            if manifest is None:
                fs, path = fsspec.core.url_to_fs(source)
                if not fs.exists(path):
                    raise DataSourceError(f"{what}: {source} does not exist")
                raise DataSourceError(f"{what}: no {MANIFEST} in {manifest_folder(source)} (write shards with "
                                      f"python -m distgan.data.prepare, or give brace-expanded shard URLs)")
            urls = manifest.urls(manifest_folder(source))
        else:
            urls = list(braceexpand.braceexpand(source))
            fs, _ = fsspec.core.url_to_fs(urls[0])
            missing = [u for u in urls if not fs.exists(fsspec.core.url_to_fs(u)[1])]
            if missing:
                raise DataSourceError(f"{what}: {len(missing)} of {len(urls)} shards missing, e.g. {missing[0]}")
    except DataSourceError:
        raise
    except Exception as exc:  # no credentials, no network, a garbled manifest, ...
        raise DataSourceError(f"{what}: cannot read {source}: {first_line(exc)}") from None
    if not urls or (manifest is not None and manifest.total == 0):
        raise DataSourceError(f"{what}: {source} holds no images")
    return urls, manifest


def check_manifest(manifest: Manifest, image_size: int, channels: int, what: str = "data.source") -> None:
    """Shards of another resolution would make every sample bad: one error, up front."""
    if manifest.image_size != image_size:
        raise DataSourceError(f"{what}: shards hold {manifest.image_size} px images, model.image_size is {image_size}")
    if manifest.format == "raw" and manifest.channels != channels:
        raise DataSourceError(f"{what}: raw shards hold {manifest.channels}-channel images, "
                              f"model.channels is {channels}")


def resolve_shards(cfg: Config) -> list[str]:
    source = cfg.data.source
    if source == "demo":
        root = ensure_demo_shards(cfg.data.cache_dir, cfg.model.image_size, cfg.data.demo_images, cfg.model.channels)
        return read_manifest(root).urls(root)
    urls, manifest = resolve_source(source)
    if manifest is not None:
        check_manifest(manifest, cfg.model.image_size, cfg.model.channels)
    return urls


MIN_SAMPLE_BYTES = 1024  # a tar member's header block and at least one data block


def shard_counts(urls: list[str], manifest: Optional[Manifest], what: str = "data.source") -> list[int]:
    """Samples per shard: the manifest's, checked against the shards' sizes, or counted by reading them through."""
    if manifest is None:
        return [count_samples(url) for url in urls]
    counts = manifest.counts()
    listings: dict[str, dict] = {}
    for url, count in zip(urls, counts):
        if not url.endswith(".tar"):  # compressed shards can be far smaller than their images
            continue
        fs, path = fsspec.core.url_to_fs(url)
        folder = path.rsplit("/", 1)[0]
        if folder not in listings:
            listings[folder] = {e["name"].rstrip("/"): e.get("size") for e in fs.ls(folder, detail=True)}
        size = listings[folder].get(path)
        # far more than the bytes hold (a cut-off shard holds fewer than its count: that is fine): evaluation would
        # pad every rank to that count for days
        if size is not None and count * MIN_SAMPLE_BYTES > 100 * size + (1 << 20):
            raise DataSourceError(f"{what}: {MANIFEST} says {count} images in {url}, more than its {size} bytes hold")
    return counts
