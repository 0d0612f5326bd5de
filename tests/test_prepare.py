"""prepare -> read round trips on a generated CelebA stand-in (its folder and its zip), and the command's edges.

The stand-in (benchmarks/fake_celeba.py) has CelebA's layout, file names, partition file and 178x218 image size;
every expected pixel is computed here again with PIL, independently of prepare's code.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_module
from distgan.errors import UserError
from distgan.data import prepare
from fake_celeba import split_of, write_fake_celeba
from distgan.data.shards import read_manifest
from distgan.data.sources import resolve_source
from distgan.data.stream import ShardStream
from distgan.data.validation import ValidationStream

COUNT = 120  # images in the stand-in: 96 train, 12 valid, 12 test
SIZE = 16


@pytest.fixture(scope="module")
def celeba(tmp_path_factory) -> Path:
    """ROOT/celeba/{img_align_celeba/, list_eval_partition.txt, img_align_celeba.zip}; returns ROOT/celeba."""
    return write_fake_celeba(tmp_path_factory.mktemp("celeba-root"), COUNT, make_zip=True)


def ids_of(split: int) -> set[str]:
    return {f"{i:06d}" for i in range(1, COUNT + 1) if split_of(i) == split}


def expected_pixels(celeba: Path, key: str, crop: int = 140) -> np.ndarray:
    """Center crop then bicubic resize, straight from PIL (CelebA: 178x218, crop 140 -> box (19, 39, 159, 179))."""
    img = Image.open(celeba / "img_align_celeba" / f"{key}.jpg").convert("RGB")
    left, top = (178 - crop) // 2, (218 - crop) // 2
    return np.asarray(img.crop((left, top, left + crop, top + crop)).resize((SIZE, SIZE), Image.BICUBIC))


def read_all(source: str, size: int = SIZE, channels: int = 3) -> dict[str, np.ndarray]:
    """Every image of a prepared folder, one pass, as {key: HWC uint8}; fails on a key seen twice."""
    stream = ValidationStream.from_source(source, 32, size, channels, with_keys=True)
    images = {}
    for batch, meta in stream:
        assert meta["bad"] == 0
        for key, image in zip(meta["keys"], batch[: meta["valid"]]):
            assert key not in images, f"{key} read twice"
            images[key] = image.permute(1, 2, 0).numpy()
    return images


def test_celeba_folder_round_trip(celeba, tmp_path):
    out = tmp_path / "train"
    # the root above celeba/ (as given to torchvision's CelebA), through the command line, 2 processes
    result = run_module("distgan.data.prepare", str(celeba.parent), str(out), "--size", str(SIZE),
                        "--shard-size", "25", "--workers", "2")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(str(out))
    train_ids = ids_of(0)
    assert (manifest.total, manifest.split, manifest.format, manifest.image_size, manifest.crop) == (
        len(train_ids), "train", "raw", SIZE, 140)
    assert [s["count"] for s in manifest.shards] == [25, 25, 25, 21]

    images = read_all(str(out))
    assert set(images) == train_ids  # exactly the official train split, each image once
    for key, pixels in images.items():
        np.testing.assert_array_equal(pixels, expected_pixels(celeba, key), err_msg=key)

    # the training stream's non-resampled epoch also sees every image exactly once
    urls, _ = resolve_source(str(out))
    stream = ShardStream(urls, 10, SIZE, resampled=False, shuffle_buffer=30, with_keys=True)
    keys = [k for _, meta in stream for k in meta["keys"]]
    assert sorted(keys) == sorted(train_ids)


@pytest.mark.parametrize("fmt", ["raw", "jpg"])
def test_celeba_zip_round_trip(celeba, tmp_path, fmt):
    out = tmp_path / "valid"
    assert prepare.main([str(celeba / "img_align_celeba.zip"), str(out), "--split", "valid", "--size", str(SIZE),
                         "--format", fmt, "--shard-size", "5", "--workers", "1"]) == 0
    images = read_all(str(out))
    assert set(images) == ids_of(1)
    for key, pixels in images.items():
        expected = expected_pixels(celeba, key)
        if fmt == "raw":
            np.testing.assert_array_equal(pixels, expected, err_msg=key)
        else:  # lossy: close, not equal
            assert np.abs(pixels.astype(int) - expected).mean() < 4, key


def test_crop_option_and_test_split(celeba, tmp_path):
    out = tmp_path / "test148"
    assert prepare.main([str(celeba), str(out), "--split", "test", "--crop", "148", "--size", str(SIZE),
                         "--format", "png", "--workers", "1"]) == 0
    images = read_all(str(out))
    assert set(images) == ids_of(2)
    for key, pixels in images.items():
        np.testing.assert_array_equal(pixels, expected_pixels(celeba, key, crop=148), err_msg=key)


def test_any_folder_of_images(tmp_path):
    """Recursive; jpg/png/webp; grayscale (8 and 16 bits) and RGBA converted; the largest centered square; junk
    skipped."""
    src = tmp_path / "photos"
    (src / "a" / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))  # 40x30: square crop x 5..35
    wide.save(src / "wide.png")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").save(src / "a" / "gray.png")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, 8:] = (200, 10, 10, 255)  # left half fully transparent, right half opaque red
    Image.fromarray(rgba, "RGBA").save(src / "a" / "b" / "alpha.v2.png")  # a dot in the name: key alpha_v2
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / "a" / "pic.webp", lossless=True)
    ramp = np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 256
    Image.fromarray((ramp * 257).astype(np.uint16)).save(src / "deep.png")  # 16-bit grayscale: 0..65535
    (src / "notes.txt").write_text("not an image, not even looked at")
    (src / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")

    out = tmp_path / "out"
    assert prepare.main([str(src), str(out), "--size", str(SIZE), "--workers", "1"]) == 0
    manifest = read_manifest(str(out))
    assert (manifest.total, manifest.skipped, manifest.split, manifest.crop) == (5, 1, "all", 0)
    images = read_all(str(out))
    assert set(images) == {"wide", "a/gray", "a/b/alpha_v2", "a/pic", "deep"}
    np.testing.assert_array_equal(images["deep"], np.repeat(ramp[:, :, None], 3, axis=2))  # scaled, not clipped
    square = wide.crop((5, 0, 35, 30)).resize((SIZE, SIZE), Image.BICUBIC)
    np.testing.assert_array_equal(images["wide"], np.asarray(square))
    gray = images["a/gray"]
    assert (gray[:, :, 0] == gray[:, :, 1]).all() and (gray[:, :, 1] == gray[:, :, 2]).all()
    np.testing.assert_array_equal(images["a/b/alpha_v2"][:, :8], 255)  # transparent -> white
    np.testing.assert_array_equal(images["a/b/alpha_v2"][:, 8:], np.broadcast_to([200, 10, 10], (16, 8, 3)))

    out1 = tmp_path / "gray"
    assert prepare.main([str(src), str(out1), "--size", str(SIZE), "--channels", "1", "--format", "raw",
                         "--workers", "1"]) == 0
    assert read_all(str(out1), channels=1)["a/b/alpha_v2"].shape == (SIZE, SIZE, 1)


def test_images_whose_names_give_the_same_key_keep_their_own_keys(tmp_path):
    """a.jpg and a.png share the key "a"; numbering the second must not give it the key of an a_1.jpg, or the two
    would be one sample (or one key, twice) in the shards."""
    from distgan.data.inputs import folder_images

    rng = np.random.default_rng(0)
    for name in ("a.jpg", "a.png", "a_1.jpg", "b c.png", "b_c.png"):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / name)
    keys = sorted(item.key for item in folder_images(tmp_path))
    assert len(set(keys)) == 5, keys
    assert {"a", "a_1", "b_c"} <= set(keys)


def test_out_as_fsspec_url(celeba, tmp_path):
    url = f"file://{tmp_path}/viaurl"
    assert prepare.main([str(celeba), url, "--split", "valid", "--size", str(SIZE), "--shard-size", "4",
                         "--workers", "2"]) == 0
    assert set(read_all(url)) == ids_of(1)


def test_resume_keeps_finished_shards_and_refuses_other_settings(celeba, tmp_path):
    out = tmp_path / "resumable"
    args = [str(celeba), str(out), "--split", "valid", "--size", str(SIZE), "--shard-size", "4", "--workers", "1"]
    assert prepare.main(args) == 0
    first = json.loads((out / "manifest.json").read_text())
    # an interrupted run: no manifest, shard 1 never renamed into place (only its temporary file exists)
    (out / "manifest.json").unlink()
    (out / "shard-000001.tar").unlink()
    (out / "shard-000001.tar.4242.tmp").write_bytes(b"half a shard")
    os.utime(out / "shard-000000.tar", (1, 1))  # an old mtime: rewriting it would change it
    # shard 2 cut short after its first sample (a machine that lost power after the rename, before the data
    # reached the disk): written again, not counted as the one image it still holds
    whole = (out / "shard-000002.tar").read_bytes()
    (out / "shard-000002.tar").write_bytes(whole[:1536])

    assert prepare.main(args) == 0
    assert os.stat(out / "shard-000000.tar").st_mtime == 1  # kept, not rewritten
    assert (out / "shard-000002.tar").read_bytes() == whole
    assert not list(out.glob("*.tmp"))
    assert json.loads((out / "manifest.json").read_text())["shards"] == first["shards"]
    assert set(read_all(str(out))) == ids_of(1)

    with pytest.raises(UserError, match="other settings.*size: 16 -> 32"):
        prepare.main([*args[:4], "--size", "32", *args[6:]])


@pytest.mark.parametrize("case", ["missing", "empty", "split", "out"])
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "one.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    src, out, extra, message = {
        "missing": (tmp_path / "nope", tmp_path / "o", [], "does not exist"),
        "empty": (empty, tmp_path / "o", [], "no images found"),
        "split": (tmp_path, tmp_path / "o", ["--split", "valid"], "needs CelebA's list_eval_partition.txt"),
        "out": (tmp_path, "nosuchprotocol://bucket/x", [], "cannot use nosuchprotocol://bucket/x"),
    }[case]
    result = run_module("distgan.data.prepare", str(src), str(out), *extra)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
