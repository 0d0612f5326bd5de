"""The images prepare reads: a CelebA root or zip, or any folder or zip of images."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from PIL import Image

from distgan.data.codec import open_header
from distgan.errors import UserError

SPLITS = {"train": 0, "valid": 1, "test": 2}
# an input larger than this is skipped before decoding (prepare --max-pixels; docs/data.md)
MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PARTITION_FILE = "list_eval_partition.txt"
CELEBA_FOLDER = "img_align_celeba"


@dataclass(frozen=True)
class InputImage:
    key: str  # the sample key in the shards: CelebA's "000001", a folder's relative path without suffix
    path: str  # the image file, or the zip that holds it
    member: str = ""  # the name inside the zip

    def describe(self) -> str:
        return f"{self.path}:{self.member}" if self.member else self.path


@dataclass
class Inputs:
    images: list[InputImage]
    kind: str  # "celeba folder", "celeba zip", "folder" or "zip"
    split: str


def find_inputs(src: str, split: Optional[str]) -> Inputs:
    """The images of one split, sorted by key; split None: "train" given a partition file, else "all"."""
    root = Path(src).expanduser()
    if not root.exists():
        raise UserError(f"{src} does not exist")
    images_dir, zip_path, partition = locate_celeba(root)
    if split is None:
        split = "train" if partition else "all"
    if split != "all" and partition is None:
        raise UserError(f"--split {split} needs CelebA's {PARTITION_FILE} next to the images in {src}; "
                        f"a plain set of images has only --split all")
    if images_dir is not None:
        kind, names = "celeba folder", folder_images(images_dir)
    elif zip_path is not None:
        kind, names = ("celeba zip" if partition else "zip"), zip_images(zip_path)
    else:
        kind, names = "folder", folder_images(root)
    if partition is not None and split != "all":
        wanted = read_partition(partition, SPLITS[split])
        names = [item for item in names if Path(item.member or item.path).name in wanted]
    if not names:
        raise UserError(f"no images found in {src}" + (f" for --split {split}" if split != "all" else ""))
    return Inputs(sorted(names, key=lambda item: item.key), kind, split)


def locate_celeba(root: Path) -> tuple[Optional[Path], Optional[Path], Optional[Path]]:
    """(extracted image folder, zip, partition file) of a CelebA root; (None, zip or None, partition) otherwise."""
    if root.is_file():
        if root.suffix.lower() != ".zip":
            raise UserError(f"{root} is a file but not a .zip; give a folder of images, a CelebA root or a zip")
        partition = root.parent / PARTITION_FILE
        return None, root, partition if partition.is_file() else None
    for base in (root, root / "celeba"):
        partition = base / PARTITION_FILE
        partition = partition if partition.is_file() else None
        if (base / CELEBA_FOLDER).is_dir():
            return base / CELEBA_FOLDER, None, partition
        if (base / f"{CELEBA_FOLDER}.zip").is_file():
            return None, base / f"{CELEBA_FOLDER}.zip", partition
    return None, None, None


def read_partition(path: Path, split_id: int) -> set[str]:
    wanted = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise UserError(f"{path}:{number}: expected 'FILE.jpg SPLIT', got {line.strip()!r}")
        if int(parts[1]) == split_id:
            wanted.add(parts[0])
    return wanted


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.lower().endswith(IMAGE_SUFFIXES) and not base.startswith(".") and "__MACOSX" not in name


def sample_key(relative: str) -> str:
    """A relative path without suffix as a WebDataset key: dots and spaces become _."""
    stem = relative.rsplit(".", 1)[0]
    return re.sub(r"[.\s]", "_", stem)


def folder_images(folder: Path) -> list[InputImage]:
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).as_posix()
        if is_image_name(relative) and path.is_file():
            found.append(InputImage(sample_key(relative), str(path)))
    return unique_keys(found)


def zip_images(path: Path) -> list[InputImage]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir() and is_image_name(info.filename)]
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    # keys without the zip's one top folder: img_align_celeba/000001.jpg -> 000001
    top = {name.split("/", 1)[0] for name in names}
    strip = len(top) == 1 and all("/" in name for name in names)
    return unique_keys([InputImage(sample_key(name.split("/", 1)[1] if strip else name), str(path), name)
                        for name in names])


def unique_keys(images: list[InputImage]) -> list[InputImage]:
    """Images that would share a key (a.jpg, a.png) keep their own: later ones get an unused _N."""
    originals = {item.key for item in images}
    used: set[str] = set()
    result = []
    for item in sorted(images, key=lambda item: (item.key, item.member or item.path)):
        key, n = item.key, 0
        while key in used or (n > 0 and key in originals):
            n += 1
            key = f"{item.key}_{n}"
        used.add(key)
        result.append(item if n == 0 else InputImage(key, item.path, item.member))
    return result


_open_zips: dict[str, zipfile.ZipFile] = {}  # one handle per zip per process: workers read many members


def load_image(item: InputImage, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The decoded image; ValueError over max_pixels, checked from the header before decoding."""
    if item.member:
        archive = _open_zips.get(item.path)
        if archive is None:
            archive = _open_zips[item.path] = zipfile.ZipFile(item.path)
        with archive.open(item.member) as f:
            img = open_header(f)
            check_pixels(img, max_pixels)
            img.load()
        return img
    with open_header(item.path) as img:
        check_pixels(img, max_pixels)
        img.load()
    return img



def check_pixels(img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise ValueError(f"{width}x{height} px, more than --max-pixels {max_pixels}")
