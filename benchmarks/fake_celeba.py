"""A CelebA-shaped stand-in, generated (CelebA cannot be downloaded on the build machines): for tests and benchmarks.

Same layout, file names and partition file as the real thing, in the layout torchvision's CelebA class expects:
    ROOT/celeba/img_align_celeba/000001.jpg ...   178x218 JPEGs (the demo faces on a gradient background)
    ROOT/celeba/list_eval_partition.txt           "000001.jpg 0" lines: 0 = train, 1 = valid, 2 = test
    ROOT/celeba/img_align_celeba.zip              with make_zip=True: members img_align_celeba/000001.jpg ...
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from distgan.data.demo import draw_face

WIDTH, HEIGHT = 178, 218


def fake_face(index: int, width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """A face on a background that changes across the whole frame, so a crop in the wrong place shows."""
    rng = np.random.default_rng(10_000 + index)
    ys, xs = np.mgrid[0:height, 0:width]
    start, slope = rng.integers(0, 120, 3), rng.uniform(0.2, 0.6, 3)
    background = np.stack([(start[c] + slope[c] * (xs + 2 * ys)) % 256 for c in range(3)], axis=-1)
    img = Image.fromarray(background.astype(np.uint8))
    side = min(width, height) * 3 // 4
    img.paste(draw_face(index, side), ((width - side) // 2, (height - side) // 2 + height // 20))
    return img


def split_of(index: int) -> int:
    """Roughly CelebA's proportions (81% / 10% / 9%), interleaved rather than in blocks."""
    return {8: 1, 9: 2}.get(index % 10, 0)


def write_fake_celeba(root: str | Path, count: int, make_zip: bool = False, width: int = WIDTH,
                      height: int = HEIGHT) -> Path:
    """Writes ROOT/celeba/... as described above; returns ROOT/celeba."""
    base = Path(root) / "celeba"
    images = base / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(1, count + 1):
        name = f"{i:06d}.jpg"
        fake_face(i, width, height).save(images / name, quality=90)
        lines.append(f"{name} {split_of(i)}")
    (base / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    if make_zip:
        with zipfile.ZipFile(base / "img_align_celeba.zip", "w", zipfile.ZIP_STORED) as archive:
            for i in range(1, count + 1):
                archive.write(images / f"{i:06d}.jpg", f"img_align_celeba/{i:06d}.jpg")
    return base
