"""Turn data.source into a list of shard URLs: "demo", a shard folder or manifest.json, or brace-expanded URLs."""

from __future__ import annotations

import braceexpand
import fsspec

from distgan.config import Config
from distgan.data.demo import ensure_demo_shards
from distgan.data.shards import read_manifest


class DataSourceError(ValueError):
    """A missing, empty or unreadable data source: a user mistake, reported in one line."""


def resolve_shards(cfg: Config) -> list[str]:
    source = cfg.data.source
    if source == "demo":
        root = ensure_demo_shards(cfg.data.cache_dir, cfg.model.image_size, cfg.data.demo_images, cfg.model.channels)
        return read_manifest(root).urls(root)
    if source.startswith("pipe:"):
        return list(braceexpand.braceexpand(source))
    try:
        if source.endswith(".json") or "{" not in source and not source.endswith(".tar"):
            manifest = read_manifest(source)
            if manifest is None:
                raise DataSourceError(f"data.source: no {source if source.endswith('.json') else source + '/manifest.json'}")
            root = source.rsplit("/", 1)[0] if source.endswith(".json") else source
            urls = manifest.urls(root)
        else:
            urls = list(braceexpand.braceexpand(source))
            fs, _ = fsspec.core.url_to_fs(urls[0])
            missing = [u for u in urls if not fs.exists(fsspec.core.url_to_fs(u)[1])]
            if missing:
                raise DataSourceError(f"data.source: {len(missing)} of {len(urls)} shards missing, e.g. {missing[0]}")
    except DataSourceError:
        raise
    except Exception as exc:
        raise DataSourceError(f"data.source: cannot read {source}: {exc}") from None
    if not urls:
        raise DataSourceError(f"data.source: {source} lists no shards")
    return urls
