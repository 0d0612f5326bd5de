"""Writing WebDataset tar shards with a manifest.

Each shard is written under a temporary name and renamed when complete, so a crash never leaves a half-written
shard that looks whole. manifest.json records the count per shard, the total, image size and format; the reader
uses it for the epoch length. Works on local paths and fsspec URLs (s3://, gs://, file://).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

import fsspec
import webdataset as wds

MANIFEST = "manifest.json"


@dataclass
class Manifest:
    shards: list[dict]  # [{"name": "shard-000000.tar", "count": 1000}, ...]
    total: int
    image_size: int
    channels: int
    format: str  # png | jpg | raw
    source: str = ""
    split: str = "all"
    created: float = field(default_factory=time.time)

    def urls(self, root: str) -> list[str]:
        return [join(root, s["name"]) for s in self.shards]


def join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def write_manifest(root: str, manifest: Manifest) -> None:
    fs, path = fsspec.core.url_to_fs(root)
    tmp = join(path, MANIFEST + ".tmp")
    with fs.open(tmp, "w") as f:
        json.dump(asdict(manifest), f, indent=1)
    fs.mv(tmp, join(path, MANIFEST))


def read_manifest(root: str) -> Optional[Manifest]:
    fs, path = fsspec.core.url_to_fs(root)
    target = path if path.endswith(".json") else join(path, MANIFEST)
    if not fs.exists(target):
        return None
    with fs.open(target, "r") as f:
        data = json.load(f)
    return Manifest(**data)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def write_shard(root: str, index: int, samples: Iterable[dict]) -> int:
    """Write one shard from WebDataset sample dicts ({"__key__": ..., "png": bytes, ...}); returns the count."""
    fs, path = fsspec.core.url_to_fs(root)
    fs.makedirs(path, exist_ok=True)
    final = join(path, shard_name(index))
    tmp = final + ".tmp"
    buf = io.BytesIO()
    count = 0
    with wds.TarWriter(buf) as writer:
        for sample in samples:
            writer.write(sample)
            count += 1
    with fs.open(tmp, "wb") as f:
        f.write(buf.getvalue())
    fs.mv(tmp, final)
    return count
