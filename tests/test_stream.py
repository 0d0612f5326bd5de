"""The readers under DDP-like splitting: two ranks with spawned loader workers read disjoint parts that cover the
data set and take the same number of batches; shard sources of every kind agree; pixels reach [-1, 1] exactly.

The data set has 203 images in 7 shards (6 x 30 + 23): the shards divide evenly neither over 2 ranks nor over
4 (rank, worker) units. Each image's pixels encode its number, so a key delivered with the wrong pixels shows.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from distgan.data.codec import encode_image
from distgan.data.shards import Manifest, shard_name, write_manifest, write_shard
from distgan.errors import DataSourceError
from distgan.data.sources import resolve_shards, resolve_source
from distgan.data.stream import RealBatches, ShardStream, to_model_range
from distgan.data.validation import ValidationStream, validation_batches

SIZE = 8
SHARDS = [30] * 6 + [23]
TOTAL = sum(SHARDS)


def image_of(number: int) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), (number % 256, number // 256, 7), np.uint8)


def write_numbered_shards(root: Path, counts: list[int], fmt: str = "png") -> list[str]:
    """Shards of images numbered 0.. in order, keys "img00042"; returns all keys. Writes manifest.json."""
    number = 0
    for index, count in enumerate(counts):
        samples = [{"__key__": f"img{n:05d}", fmt: encode_image(Image.fromarray(image_of(n)), fmt)}
                   for n in range(number, number + count)]
        write_shard(str(root), index, samples)
        number += count
    shards = [{"name": shard_name(i), "count": c} for i, c in enumerate(counts)]
    write_manifest(str(root), Manifest(shards, number, SIZE, 3, fmt))
    return [f"img{n:05d}" for n in range(number)]


@pytest.fixture(scope="module")
def numbered(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("numbered")
    return root, write_numbered_shards(root, SHARDS)


def check_pixels(images: torch.Tensor, keys: list[str]) -> None:
    for image, key in zip(images, keys):
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(image_of(int(key[3:])))), key


@pytest.mark.timeout(300)
def test_two_ranks_with_spawned_workers_split_the_data(numbered):
    """Rank and world size reach spawned workers through ShardStream itself (docs/design.md, section 2): epoch 0 of all
    four (rank, worker) units together is the data set, once; an uneven shard count never runs a rank dry."""
    root, keys = numbered
    urls, _ = resolve_source(str(root))
    batches = 24  # per rank: 12 per worker x 8 = 96 samples, past the largest unit's epoch 0 (2 shards, 60)
    epoch0: dict[int, list[str]] = {}
    iterators = []
    for rank in (0, 1):
        stream = ShardStream(urls, 8, SIZE, rank=rank, world_size=2, num_workers=2, shuffle_buffer=16,
                             resampled=True, with_keys=True)
        loader = DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="spawn")
        iterators.append(iter(loader))  # both ranks' workers start together
    for rank, it in enumerate(iterators):
        epoch0[rank] = []
        for _ in range(batches):  # the same number on both ranks, whatever their shares of the shards
            images, meta = next(it)
            assert images.shape == (8, 3, SIZE, SIZE)
            check_pixels(images, meta["keys"])
            epoch0[rank] += [k for k, e in zip(meta["keys"], meta["epochs"]) if e == 0]
    assert not set(epoch0[0]) & set(epoch0[1])  # the ranks read different samples
    both = epoch0[0] + epoch0[1]
    assert len(both) == len(set(both)) == TOTAL  # unique keys: each sample once, the whole data set
    assert sorted(both) == keys


@pytest.mark.timeout(300)
def test_validation_two_ranks_spawned_each_image_once_and_equal_batches(numbered):
    root, keys = numbered
    seen, counts = [], []
    for rank in (0, 1):
        stream = ValidationStream.from_source(str(root), 16, SIZE, rank=rank, world_size=2, with_keys=True)
        loader = DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="spawn")
        n = 0
        for images, meta in loader:
            n += 1
            assert images.shape == (16, 3, SIZE, SIZE) and meta["bad"] == 0
            check_pixels(images[: meta["valid"]], meta["keys"])
            assert images[meta["valid"]:].eq(0).all()  # padding
            seen += meta["keys"]
        counts.append(n)
    assert counts == [len(stream)] * 2 == [7, 7]  # 101 and 102 images: ceil(102 / 16) batches on both ranks
    assert len(seen) == len(set(seen)) and sorted(seen) == keys


@pytest.mark.parametrize("counts,world,batch,workers", [
    ([5, 5, 3], 2, 4, 0),  # 13 images: 6 + 7, 2 batches each
    ([5, 5, 3], 4, 4, 0),  # 3, 3, 3, 4 images: 1 batch each
    ([2, 1], 4, 8, 0),  # fewer images than ranks: rank 0 reads nothing, still yields its one batch
    ([4, 4, 4, 4], 3, 2, 2),  # 5, 5, 6 images over 2 loader workers (fork) per rank: 3 batches each
    ([7], 2, 64, 2),  # more loader workers than batches: worker 0 reads nothing
])
def test_validation_split_edges(tmp_path, counts, world, batch, workers):
    keys = write_numbered_shards(tmp_path, counts)
    per_rank, seen = [], []
    for rank in range(world):
        stream = ValidationStream.from_source(str(tmp_path), batch, SIZE, rank=rank, world_size=world, with_keys=True)
        n = 0
        for images, meta in DataLoader(stream, batch_size=None, num_workers=workers):
            n += 1
            seen += meta["keys"]
            check_pixels(images[: meta["valid"]], meta["keys"])
        per_rank.append(n)
    assert len(set(per_rank)) == 1 and per_rank[0] == len(stream)
    assert len(seen) == len(set(seen)) and sorted(seen) == keys


def test_every_kind_of_source_reads_the_same_images(numbered, monkeypatch):
    root, keys = numbered
    brace = f"{root}/shard-{{000000..{len(SHARDS) - 1:06d}}}.tar"
    monkeypatch.chdir(root)  # for the relative ones (the API takes them as they are; the CLI makes them absolute)
    for source in (str(root), f"{root}/manifest.json", "manifest.json", ".", brace, "file://" + brace,
                   f"pipe:cat {brace}"):
        stream = ValidationStream.from_source(source, 64, SIZE, with_keys=True)  # no manifest: shards counted
        got = [k for _, meta in stream for k in meta["keys"]]
        assert sorted(got) == keys, source


def test_reads_tars_written_by_other_tools(tmp_path):
    """The reader parses tar headers itself: check it against GNU tar, webdataset's TarWriter and Python's tarfile
    (pax and GNU formats, long names that need a pax or GNU extension header), plain and gzipped."""
    import subprocess
    import tarfile

    import webdataset as wds

    folder = tmp_path / ("a-long-folder-name-" * 6).rstrip("-")  # over the 100 characters of a plain tar name
    folder.mkdir()
    keys = [f"img{n:05d}" for n in range(5)]
    for n, key in enumerate(keys):
        Image.fromarray(image_of(n)).save(folder / f"{key}.png")
    names = sorted(p.relative_to(tmp_path).as_posix() for p in folder.iterdir())
    subprocess.run(["tar", "-cf", tmp_path / "gnu.tar", "-C", tmp_path, *names], check=True)
    subprocess.run(["tar", "-czf", tmp_path / "gnu.tar.gz", "-C", tmp_path, *names], check=True)
    for fmt, name in ((tarfile.PAX_FORMAT, "pax.tar"), (tarfile.GNU_FORMAT, "gnulong.tar")):
        with tarfile.open(tmp_path / name, "w", format=fmt) as tar:
            for member in names:
                tar.add(tmp_path / member, arcname=member)
    with wds.TarWriter(str(tmp_path / "wds.tar")) as writer:
        for n, key in enumerate(keys):
            writer.write({"__key__": key, "png": (folder / f"{key}.png").read_bytes()})

    expected = {"wds.tar": keys}
    for name in ("gnu.tar", "gnu.tar.gz", "pax.tar", "gnulong.tar"):
        expected[name] = [f"{folder.name}/{key}" for key in keys]
    for name, want in expected.items():
        stream = ValidationStream.from_source(str(tmp_path / name), 8, SIZE, with_keys=True)
        images, meta = next(iter(stream))
        assert meta["keys"] == want and meta["bad"] == 0, name
        check_pixels(images[:5], keys)


def test_shuffle_buffer_changes_order_not_content(numbered):
    root, keys = numbered
    urls, _ = resolve_source(str(root))

    def one_epoch(buffer: int) -> list[str]:
        stream = ShardStream(urls, 16, SIZE, shuffle_buffer=buffer, resampled=False, with_keys=True, seed=3)
        return [k for _, meta in stream for k in meta["keys"]]

    plain, shuffled = one_epoch(0), one_epoch(64)
    assert sorted(plain) == sorted(shuffled) == keys
    assert plain != shuffled
    assert one_epoch(64) == shuffled  # seeded: the same order again


def test_resampled_stream_keeps_going_past_the_end(numbered):
    root, _ = numbered
    urls, _ = resolve_source(str(root))
    stream = iter(ShardStream(urls, 64, SIZE, shuffle_buffer=0, resampled=True))
    epochs = [meta["epoch"] for _, meta in (next(stream) for _ in range(10))]  # 640 images from 203
    assert epochs[-1] >= 2 and epochs == sorted(epochs)


def test_uint8_to_minus_one_one_on_the_device_side(numbered):
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1)
    out = to_model_range(images, torch.device("cpu"))
    assert out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([-1.0, 1.0, 51 / 127.5 - 1])

    root, _ = numbered
    urls, _ = resolve_source(str(root))
    batch = RealBatches(ShardStream(urls, 8, SIZE, shuffle_buffer=0), 0, torch.device("cpu"))()
    assert batch.dtype == torch.float32 and batch.min() >= -1 and batch.max() <= 1
    assert torch.equal(batch[:, 2], torch.full_like(batch[:, 2], 7 / 127.5 - 1))  # blue channel is 7 everywhere

    valid_batches = list(validation_batches(ValidationStream.from_source(str(root), 128, SIZE)))
    assert [valid for _, valid in valid_batches] == [128, TOTAL - 128]
    assert valid_batches[1][0][TOTAL - 128:].eq(-1).all()  # padding is black


def test_shards_for_another_image_size_are_refused_up_front(numbered, tiny_config):
    root, _ = numbered
    with pytest.raises(DataSourceError, match="shards hold 8 px images, model.image_size is 16"):
        resolve_shards(tiny_config(f"data.source={root}"))
    with pytest.raises(DataSourceError, match="shards hold 8 px images, model.image_size is 16"):
        ValidationStream.from_source(str(root), 4, 16)
