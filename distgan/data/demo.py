"""The demo data set: synthetic faces, deterministic per index so that every machine has the same."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from distgan.data.codec import encode_image
from distgan.data.shards import Manifest, read_manifest, shard_name, write_manifest, write_shard
from distgan.io.run_folder import ensure_writable

SHARD_SIZE = 512


def draw_face(index: int, size: int, channels: int = 3) -> Image.Image:
    rng = np.random.default_rng(index)
    s = size * 4
    bg = tuple(int(v) for v in rng.integers(40, 220, 3))
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    cx, cy = s / 2 + rng.normal(0, s * 0.04), s / 2 + rng.normal(0, s * 0.04)
    fw, fh = s * rng.uniform(0.26, 0.34), s * rng.uniform(0.33, 0.42)
    hair = tuple(int(v) for v in rng.choice([[30, 20, 10], [90, 60, 30], [200, 170, 90], [20, 20, 20], [120, 40, 20]]))
    d.ellipse([cx - fw * 1.1, cy - fh * 1.15, cx + fw * 1.1, cy + fh * 0.4], fill=hair)
    tone = rng.uniform(0, 1)
    skin = tuple(int(v) for v in (np.array([240, 200, 170]) * (1 - tone) + np.array([110, 70, 45]) * tone))
    d.ellipse([cx - fw, cy - fh * 0.85, cx + fw, cy + fh], fill=skin)
    ey, ex, er = cy - fh * 0.15, fw * 0.42, s * rng.uniform(0.025, 0.04)
    for sx in (-1, 1):
        d.ellipse([cx + sx * ex - er * 1.6, ey - er, cx + sx * ex + er * 1.6, ey + er], fill=(250, 250, 250))
        d.ellipse([cx + sx * ex - er * 0.8, ey - er * 0.8, cx + sx * ex + er * 0.8, ey + er * 0.8], fill=(30, 30, 60))
    my, mw = cy + fh * 0.5, fw * rng.uniform(0.3, 0.55)
    d.chord([cx - mw, my - fh * 0.12, cx + mw, my + fh * 0.12], 0, 180, fill=(150, 40, 50))
    img = img.resize((size, size), Image.LANCZOS)
    return img.convert("L") if channels == 1 else img


def demo_root(cache_dir: str, size: int, count: int, channels: int) -> Path:
    return Path(os.path.expanduser(cache_dir)) / f"demo-faces-{size}px-{channels}ch-{count}-raw"


def ensure_demo_shards(cache_dir: str, size: int, count: int, channels: int = 3) -> str:
    """Writes the demo shards unless they exist; returns their folder. Safe if two processes race."""
    root = demo_root(cache_dir, size, count, channels)
    if read_manifest(str(root)) is not None:
        return str(root)
    ensure_writable(root, "data.cache_dir")  # one line, not a traceback from the first shard
    shards = []
    for index, start in enumerate(range(0, count, SHARD_SIZE)):
        keys = range(start, min(start + SHARD_SIZE, count))
        # raw: the reader's fastest format (docs/data.md)
        samples = ({"__key__": f"face{i:08d}", "raw": encode_image(draw_face(i, size, channels), "raw")} for i in keys)
        shards.append({"name": shard_name(index), "count": write_shard(str(root), index, samples)})
    # created=0: every writer's manifest the same, so reference statistics keyed by it (evaluation/) stay cached
    write_manifest(str(root), Manifest(shards, count, size, channels, "raw", source="demo", split="train", created=0.0))
    return str(root)
