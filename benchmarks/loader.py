"""Loader benchmark: images/s of the shard reader for each format, against torchvision's ImageFolder.

    .venv/bin/python benchmarks/loader.py                      # 4096 images, 32 px, batch 64, in-process (1 core)
    .venv/bin/python benchmarks/loader.py --size 64 --loader-workers 2

The images are the generated CelebA stand-in (178x218 JPEGs; nothing is downloaded), written once under --work
and reused. Rows:
- shards-<format>: the training stream (ShardStream, resampled, shuffle buffer 1000) through a DataLoader, with
  the uint8 -> [-1, 1] conversion.
- imagefolder-celeba: ImageFolder over the original JPEGs with CenterCrop(140) + Resize (what reading CelebA
  without prepare costs: the crop and resize are paid on every read).
- imagefolder-resized: ImageFolder over one PNG file per image, already cropped and resized (per-file overhead
  only, the same pixels as the shards).
"images/s per core" divides by the processes doing the decoding: 1 in-process, else the loader workers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distgan.data import prepare  # noqa: E402
from fake_celeba import write_fake_celeba  # noqa: E402
from distgan.data.shards import iter_samples, read_manifest  # noqa: E402
from distgan.data.stream import ShardStream, to_model_range  # noqa: E402


def timed(batches, count: int) -> float:
    """images/s over count batches after the first one (worker start-up is not counted)."""
    it = iter(batches)
    next(it)
    seen, start = 0, time.perf_counter()
    for _ in range(count):
        seen += len(next(it))
    return seen / (time.perf_counter() - start)


def shard_batches(root: str, size: int, batch: int, workers: int):
    """The training stream as the loop uses it: resampled, shuffle buffer 1000, uint8 -> [-1, 1]."""
    manifest = read_manifest(root)
    stream = ShardStream(manifest.urls(root), batch, size, num_workers=workers, shuffle_buffer=1000, resampled=True)
    loader = DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None)
    return (to_model_range(images, torch.device("cpu")) for images, _ in loader)


def folder_batches(root: Path, transform, batch: int, workers: int):
    """ImageFolder epochs back to back (persistent workers), the same conversion to [-1, 1]."""
    from torchvision.datasets import ImageFolder

    loader = DataLoader(ImageFolder(str(root), transform=transform), batch_size=batch, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    while True:
        for images, _ in loader:
            yield to_model_range(images, torch.device("cpu"))


def bytes_per_image(files: list[Path], count: int) -> float:
    return sum(f.stat().st_size for f in files) / count


def write_resized_files(shards: str, folder: Path) -> None:
    """One PNG file per image, straight from the png shards' bytes: the same pixels, one file each."""
    (folder / "all").mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(shards)
    for url in manifest.urls(shards):
        for sample in iter_samples(url, print):
            (folder / "all" / f"{sample['__key__']}.png").write_bytes(sample["png"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers (0: in-process, one core)")
    p.add_argument("--formats", default="jpg,png,raw")
    p.add_argument("--batches", type=int, default=300, help="batches timed per reader")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "distgan-loader-bench"))
    p.add_argument("--consumed", type=float, default=800,
                   help="img/s the training consumes, for the ratio column (the CPU demo: ~800 on 2 cores)")
    args = p.parse_args()
    if min(args.images, args.size, args.batch, args.batches) < 1 or args.loader_workers < 0 or args.consumed <= 0:
        p.error("--images, --size, --batch and --batches must be >= 1, --loader-workers >= 0, --consumed > 0")
    if args.images < args.batch:  # the ImageFolder readers drop the last partial batch: they would yield nothing
        p.error(f"--images ({args.images}) must be at least --batch ({args.batch})")
    torch.set_num_threads(1)
    work, size, batch, workers = Path(args.work), args.size, args.batch, args.loader_workers
    src = work / f"celeba-{args.images}"
    if not (src / "celeba" / "list_eval_partition.txt").exists():
        print(f"writing {args.images} stand-in CelebA images to {src} ...", flush=True)
        write_fake_celeba(src, args.images)
    roots = {}
    for fmt in args.formats.split(",") + ["png"]:
        roots[fmt] = str(work / f"shards-{args.images}-{size}px-{fmt}")
        if read_manifest(roots[fmt]) is None:
            prepare.main([str(src), roots[fmt], "--split", "all", "--size", str(size), "--format", fmt,
                          "--shard-size", "1000"])
    resized = work / f"resized-{args.images}-{size}px"
    if not resized.exists():
        write_resized_files(roots["png"], resized)

    from torchvision import transforms

    rows = [(f"shards-{fmt}", shard_batches(roots[fmt], size, batch, workers),
             bytes_per_image(list(Path(roots[fmt]).glob("*.tar")), args.images)) for fmt in args.formats.split(",")]
    rows.append(("imagefolder-celeba", folder_batches(src / "celeba", transforms.Compose([
        transforms.CenterCrop(140), transforms.Resize(size), transforms.PILToTensor()]), batch, workers),
        bytes_per_image(list((src / "celeba" / "img_align_celeba").iterdir()), args.images)))
    rows.append(("imagefolder-resized", folder_batches(resized, transforms.PILToTensor(), batch, workers),
                 bytes_per_image(list((resized / "all").iterdir()), args.images)))

    cores = max(1, workers)
    print(f"\n{args.images} images, {args.batches} batches timed, {size} px, batch {batch}, loader workers {workers}, torch threads 1, "
          f"{os.cpu_count()} cores on this machine")
    print(f"| reader | images/s | images/s per core | x {args.consumed:.0f} img/s consumed | bytes per image |")
    print("|---|---|---|---|---|")
    for name, batches, size_on_disk in rows:
        rate = timed(batches, args.batches)
        print(f"| {name} | {rate:,.0f} | {rate / cores:,.0f} | {rate / args.consumed:.0f}x | {size_on_disk:,.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
