"""python -m distgan.data.prepare SRC OUT: CelebA (folder or zip) or any folder of images -> WebDataset shards,
resized once so that the readers only decode.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

import fsspec
from PIL import Image, ImageOps
from tqdm import tqdm

from distgan.cli import run_main
from distgan.config import SUPPORTED_IMAGE_SIZES
from distgan.data.codec import FORMATS, encode_image
from distgan.data.inputs import MAX_PIXELS, SPLITS, InputImage, find_inputs, load_image
from distgan.data.shards import MANIFEST, Manifest, count_samples, join, shard_name, write_manifest, write_shard
from distgan.errors import UserError, first_line

log = logging.getLogger("distgan.data.prepare")

PLAN = "prepare.json"
CELEBA_CROP = 140
SHUFFLE_SEED = 0


@dataclass(frozen=True)
class Settings:
    """Everything that decides the shards' content: a resume must find exactly these in prepare.json."""

    source: str
    split: str
    size: int
    crop: int
    channels: int
    format: str
    shard_size: int
    inputs: int
    inputs_digest: str  # of the input keys: a source that gained or lost images is not the same source


# --- one image ----------------------------------------------------------------------------------------------------
def square_image(img: Image.Image, size: int, crop: int, channels: int) -> Image.Image:
    """Upright, in the target mode, center-cropped to crop x crop (0: the largest centered square), resized."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "I" or img.mode.startswith("I;16"):  # 16-bit grayscale (png): convert() would clip at 255
        img = img.convert("I").point(lambda v: v / 257).convert("L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    width, height = img.size
    side = min(width, height) if crop <= 0 else min(crop, width, height)
    left, top = (width - side) // 2, (height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img if side == size else img.resize((size, size), Image.Resampling.BICUBIC)


# --- one shard (runs in a worker process) -------------------------------------------------------------------------
def write_one_shard(job: tuple[str, int, list[InputImage], Settings, int]) -> tuple[int, int, int, list[str]]:
    """(shard index, images written, images planned, messages on unreadable inputs)."""
    out, index, items, s, max_pixels = job
    samples, failures = [], []
    for item in items:
        try:
            img = square_image(load_image(item, max_pixels), s.size, s.crop, s.channels)
            samples.append({"__key__": item.key, s.format: encode_image(img, s.format)})
        except Exception as exc:  # an unreadable input is skipped and reported, never the end of the run
            failures.append(f"{item.describe()}: {exc}")
    count = write_shard(out, index, samples) if samples else 0
    return index, count, len(items), failures


# --- the output folder: plan, resume ------------------------------------------------------------------------------
def start_or_resume(out: str, settings: Settings) -> tuple[dict[int, int], bool]:
    """({shard index: count} already written, whether manifest.json exists); writes prepare.json, or
    refuses an OUT holding other settings' shards."""
    try:
        fs, path = fsspec.core.url_to_fs(out)
        fs.makedirs(path, exist_ok=True)
        plan_path = join(path, PLAN)
        plan = json.loads(fs.cat_file(plan_path)) if fs.exists(plan_path) else None
        shards = sorted(fs.glob(join(path, "shard-*.tar")))
        complete = fs.exists(join(path, MANIFEST))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot use {out}: {first_line(exc)}") from None
    wanted = asdict(settings)
    if plan is not None and plan != wanted:
        changed = ", ".join(f"{k}: {plan.get(k)!r} -> {v!r}" for k, v in wanted.items() if plan.get(k) != v)
        raise UserError(f"{out} holds shards prepared with other settings ({changed}); use another OUT or empty it")
    if plan is None and (shards or complete):
        raise UserError(f"{out} already holds shards that this command did not write; use another OUT or empty it")
    if plan is None:
        tmp = f"{plan_path}.{os.getpid()}.tmp"
        with fs.open(tmp, "w") as f:
            json.dump(wanted, f, indent=1)
        fs.mv(tmp, plan_path)
        return {}, False
    for stale in fs.glob(join(path, "*.tmp")):  # left by an interrupted run; never read by anyone
        fs.rm(stale)
    done = {}
    for shard in shards:
        index = int(shard.rsplit("shard-", 1)[1].split(".")[0])
        problems: list[str] = []
        count = count_samples(fs.unstrip_protocol(shard), problems.append)
        if problems or count == 0:  # cut short (a crash of the machine, a copy gone wrong): its images would be lost
            log.warning("%s", f"{problems[0] if problems else shard + ': no images'}; writing it again")
            fs.rm(shard)
            continue
        done[index] = count
    return done, complete


# --- the command --------------------------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m distgan.data.prepare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="CelebA root (img_align_celeba/ + list_eval_partition.txt), img_align_celeba.zip, "
                               "or any folder (or zip) of jpg/png/webp images")
    p.add_argument("out", help="output folder or fsspec URL (s3://bucket/celeba64, gs://..., file://...)")
    p.add_argument("--size", type=int, default=64, choices=SUPPORTED_IMAGE_SIZES,
                   help="output images are SIZE x SIZE, a model.image_size (default 64)")
    p.add_argument("--crop", type=int, default=None,
                   help=f"center crop in px before resizing (default {CELEBA_CROP} for CelebA, 0 = largest square)")
    p.add_argument("--split", choices=[*SPLITS, "all"], default=None,
                   help="CelebA split from list_eval_partition.txt (default train; other sources: all)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 grayscale, 3 RGB (default 3)")
    p.add_argument("--format", choices=FORMATS, default="raw",
                   help="image encoding in the shards: raw (default; the fastest to read), png or jpg (smaller)")
    p.add_argument("--shard-size", type=int, default=2000, help="images per shard (default 2000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"skip inputs larger than this, before decoding them (default {MAX_PIXELS:,})")
    args = p.parse_args(argv)
    for name in ("size", "shard_size", "workers", "max_pixels"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.crop is not None and args.crop < 0:
        raise UserError(f"--crop must be >= 0, got {args.crop}")
    return args


def plan_settings(args: argparse.Namespace, items: list[InputImage], kind: str, split: str) -> Settings:
    crop = args.crop if args.crop is not None else (CELEBA_CROP if kind.startswith("celeba") else 0)
    digest = hashlib.sha1("\n".join(item.key for item in items).encode()).hexdigest()
    return Settings(os.path.abspath(os.path.expanduser(args.src)), split, args.size, crop, args.channels, args.format,
                    args.shard_size, len(items), digest)


def run_jobs(jobs: list, workers: int, total: int) -> list[tuple[int, int, int, list[str]]]:
    """Writes the shards over worker processes, with a progress bar (log lines when not a terminal)."""
    results = []
    bar = tqdm(total=total, unit="img", desc="prepare", disable=not sys.stderr.isatty())
    every = max(1, len(jobs) // 10)
    # spawn, not fork: fsspec's threads (s3, gs) would be inherited half-alive (docs/workarounds.md)
    pool = multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) if workers > 1 and len(jobs) > 1 else None
    try:
        done = pool.imap_unordered(write_one_shard, jobs) if pool else map(write_one_shard, jobs)
        for result in done:
            results.append(result)
            bar.update(result[2])
            if bar.disable and len(results) % every == 0:
                log.info("%d/%d shards written", len(results), len(jobs))
    finally:
        bar.close()
        if pool:
            pool.terminate()
    return results


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    inputs = find_inputs(args.src, args.split)
    items = list(inputs.images)
    random.Random(SHUFFLE_SEED).shuffle(items)
    settings = plan_settings(args, items, inputs.kind, inputs.split)
    log.info("%s: %d images (%s, split %s) -> %s: %dx%d px, crop %s, %s, %d per shard", args.src, len(items),
             inputs.kind, inputs.split, args.out, settings.size, settings.size, settings.crop or "largest square",
             settings.format, settings.shard_size)
    started = time.perf_counter()
    done, complete = start_or_resume(args.out, settings)
    if complete:
        log.info("%s is already complete (manifest.json); nothing to do", args.out)
        return 0
    if done:
        log.info("resuming: %d shards already written", len(done))
    jobs = [(args.out, index, items[start:start + settings.shard_size], settings, args.max_pixels)
            for index, start in enumerate(range(0, len(items), settings.shard_size)) if index not in done]
    results = run_jobs(jobs, args.workers, sum(len(job[2]) for job in jobs))

    counts = dict(done)
    failures = []
    for index, count, _, messages in results:
        counts[index] = count
        failures.extend(messages)
    for message in failures[:20]:
        log.warning("skipped unreadable input %s", message)
    if len(failures) > 20:
        log.warning("... and %d more unreadable inputs", len(failures) - 20)
    shards = [{"name": shard_name(i), "count": counts[i]} for i in sorted(counts) if counts[i] > 0]
    total = sum(s["count"] for s in shards)
    if total == 0:
        raise UserError(f"none of the {len(items)} images in {args.src} could be read")
    manifest = Manifest(shards, total, settings.size, settings.channels, settings.format, source=settings.source,
                        split=settings.split, crop=settings.crop, skipped=len(items) - total)
    write_manifest(args.out, manifest)
    log.info("wrote %d images in %d shards to %s in %.1f s (%d inputs skipped); train with data.source=%s",
             total, len(shards), args.out, time.perf_counter() - started, len(items) - total, args.out)
    return 0


if __name__ == "__main__":
    run_main(main)
