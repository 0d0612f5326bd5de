"""Bad data is skipped, counted and named, never a crash or a hang; a bad source is one line and exit status 2.

The data set: shard 0 holds 10 good images plus a truncated JPEG, a text member and a 20 px image where 16 px are
expected; shard 1 holds 10 good images; shard 2, the last, held 10 but was cut off in the middle of its 7th.
"""

import io
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_module
from distgan.data.codec import encode_image
from distgan.data.shards import Manifest, shard_name, write_manifest, write_shard
from distgan.errors import DataSourceError, UnusableData
from distgan.data.sources import resolve_source
from distgan.data.stream import RealBatches, ShardStream
from distgan.data.validation import ValidationStream
from distgan.launch.local import train_local

SIZE = 16
KEPT_FROM_TRUNCATED = 6  # shard 2 is cut inside its 7th member: 6 samples survive


def good(prefix: str, n: int) -> list[dict]:
    return [{"__key__": f"{prefix}{i:02d}", "png": encode_image(Image.new("RGB", (SIZE, SIZE), (i, 50, 90)), "png")}
            for i in range(n)]


def jpeg_bytes(size: int) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((size, size), 60).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


def cut_inside_member(path: Path, member_index: int) -> None:
    """Truncate a tar in the middle of one member's data (as an interrupted copy leaves it)."""
    with tarfile.open(path) as tar:
        member = tar.getmembers()[member_index]
    data = path.read_bytes()
    path.write_bytes(data[: member.offset_data + member.size // 2])


def write_bad_set(root: Path) -> Path:
    mixed = good("a", 10) + [
        {"__key__": "corrupt", "jpg": jpeg_bytes(SIZE)[:200]},  # a JPEG cut short
        {"__key__": "notes", "txt": b"a member that is not an image"},
        {"__key__": "toobig", "png": encode_image(Image.new("RGB", (20, 20)), "png")},
    ]
    counts = [write_shard(str(root), 0, mixed), write_shard(str(root), 1, good("b", 10)),
              write_shard(str(root), 2, good("c", 10))]
    cut_inside_member(root / shard_name(2), KEPT_FROM_TRUNCATED)
    shards = [{"name": shard_name(i), "count": c} for i, c in enumerate(counts)]
    write_manifest(str(root), Manifest(shards, sum(counts), SIZE, 3, "png"))
    return root


@pytest.fixture
def bad_set(tmp_path) -> Path:
    return write_bad_set(tmp_path / "bad")


def warnings_naming(caplog, shard: str, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelname == "WARNING" and shard in r.getMessage() and words in r.getMessage()]


@pytest.mark.timeout(60)
def test_one_pass_skips_counts_and_names_each_bad_case(bad_set, caplog):
    urls, _ = resolve_source(str(bad_set))
    stream = ShardStream(urls, 4, SIZE, resampled=False, shuffle_buffer=0, with_keys=True)
    keys, last = [], None
    for _, meta in stream:
        keys += meta["keys"]
        last = meta
    expected = [f"a{i:02d}" for i in range(10)] + [f"b{i:02d}" for i in range(10)] + [
        f"c{i:02d}" for i in range(KEPT_FROM_TRUNCATED)]
    assert sorted(keys) == expected
    assert last["bad"] == 4  # three bad samples, one truncated shard
    assert warnings_naming(caplog, "shard-000000.tar", "corrupt")  # the cut JPEG
    assert warnings_naming(caplog, "shard-000000.tar", "no image in sample")
    assert warnings_naming(caplog, "shard-000000.tar", "image is 20x20, expected 16x16")
    assert warnings_naming(caplog, "shard-000002.tar", f"truncated or corrupt shard after {KEPT_FROM_TRUNCATED}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage,message", [
    ("cut", "no end-of-archive marker"),  # a copy that stopped between two members
    ("garble", "header checksum mismatch"),  # a header overwritten
])
def test_shard_damaged_at_a_header_is_not_taken_for_whole(tmp_path, caplog, damage, message):
    """tarfile's stream mode would end quietly at a missing or garbled header, and the shard would look whole."""
    write_shard(str(tmp_path), 0, good("d", 10))
    path = tmp_path / shard_name(0)
    with tarfile.open(path) as tar:
        at = tar.getmembers()[KEPT_FROM_TRUNCATED].offset  # the 7th member's header
    data = path.read_bytes()
    path.write_bytes(data[:at] if damage == "cut" else data[:at] + b"garbage!" + data[at + 8:])
    stream = ShardStream([str(path)], 4, SIZE, resampled=False, shuffle_buffer=0)
    assert sum(len(images) for images, _ in stream) == KEPT_FROM_TRUNCATED
    assert stream.bad == 1
    assert warnings_naming(caplog, "shard-000000.tar", message)


@pytest.mark.timeout(60)
def test_resumed_stream_counts_bad_data_once(bad_set):
    """Replaying up to a resume position must not count the bad data it passes again."""
    urls, _ = resolve_source(str(bad_set))

    def batches(state=None):
        return RealBatches(ShardStream(urls, 4, SIZE, shuffle_buffer=8, state=state), 0, torch.device("cpu"))

    straight = batches()
    for _ in range(15):  # 60 images: two passes over 26 good ones
        straight()
    first = batches()
    for _ in range(6):  # 24 images: the reader, 8 samples ahead, has met all of epoch 0's bad data
        first()
    resumed = batches(first.state)
    for _ in range(9):
        resumed()
    assert resumed.bad_samples == straight.bad_samples >= 8  # 4 per pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_count_bad_samples_across_loader_workers(tmp_path, workers):
    """4 shards, each a bad sample then 4 good images. Either way the 20 batches of 4 are 5 passes over the 16
    good images, each pass past 4 bad samples first: 20 in all, from one process or summed over two loader workers
    (2 shards and 10 bad samples each)."""
    for i in range(4):
        write_shard(str(tmp_path), i, [{"__key__": f"x{i}", "txt": b"no image"}] + good(f"s{i}-", 4))
    urls = [str(tmp_path / shard_name(i)) for i in range(4)]
    real = RealBatches(ShardStream(urls, 4, SIZE, num_workers=workers, shuffle_buffer=0), workers,
                       torch.device("cpu"))
    for _ in range(20):
        assert real().shape == (4, 3, SIZE, SIZE)
    assert real.bad_samples == 20


@pytest.mark.timeout(60)
def test_validation_counts_what_is_missing_and_keeps_the_batch_count(bad_set, caplog):
    stream = ValidationStream.from_source(str(bad_set), 8, SIZE, rank=1, world_size=2)
    other = ValidationStream.from_source(str(bad_set), 8, SIZE, rank=0, world_size=2)
    metas = [meta for _, meta in stream] + [meta for _, meta in other]
    assert len(metas) == len(stream) + len(other) == 2 * 3  # 33 images by the manifest: 16 + 17, 3 batches each
    assert sum(m["valid"] for m in metas) == 20 + KEPT_FROM_TRUNCATED
    assert sum(m["bad"] for m in metas) == 3 + (10 - KEPT_FROM_TRUNCATED)
    assert warnings_naming(caplog, "shard-000002.tar", f"ends after {KEPT_FROM_TRUNCATED} of its 10 samples")


@pytest.mark.timeout(60)
def test_unreadable_shard_url_is_skipped_and_named(bad_set, caplog):
    urls, _ = resolve_source(str(bad_set))
    gone = urls[1].replace("shard-000001", "shard-000099")
    stream = ShardStream([urls[1], gone, "pipe:exit 3"], 4, SIZE, resampled=False, shuffle_buffer=0)
    assert sum(len(images) for images, _ in stream) == 10
    assert stream.bad == 2
    assert warnings_naming(caplog, "shard-000099.tar", "cannot open")
    assert warnings_naming(caplog, "pipe:exit 3", "")


@pytest.mark.timeout(120)
def test_bad_sample_count_reaches_tensorboard(bad_set, tiny_config, tmp_path):
    cfg = tiny_config(f"data.source={bad_set}", "train.steps=2", "train.batch_size=8", "data.shuffle_buffer=0")
    state = train_local(cfg, tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    values = [e.value for e in acc.Scalars("data/bad_samples")]
    # 2 steps x 2 critic batches x 8 = 32 images: more than the 26 good ones, so past all 4 bad cases of a pass
    assert values[-1] == sum(state.data_state["bad"].values()) >= 4


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_nothing_readable_ends_in_a_one_line_error_not_a_hang(tmp_path, workers):
    for i in range(3):
        write_shard(str(tmp_path), i, [{"__key__": f"x{j}", "txt": b"no image"} for j in range(3)])
    urls = [str(tmp_path / shard_name(i)) for i in range(3)]
    real = RealBatches(ShardStream(urls, 4, SIZE, num_workers=workers), workers, torch.device("cpu"))
    message, kind = "", None
    try:
        real()
    except DataSourceError as exc:  # not pytest.raises: its traceback would keep the loader's workers alive
        message, kind = str(exc), type(exc)
    assert message.startswith("rank 0 loader worker 0: no readable image") and "\n" not in message
    assert kind is UnusableData, "Ray retries other data errors: with ray.max_failures=-1, forever"


@pytest.mark.parametrize("make,message", [
    (lambda root: root / "missing", "does not exist"),
    (lambda root: root, "no manifest.json in"),
    (lambda root: f"{root}/shard-{{000000..000002}}.tar", "3 of 3 shards missing"),
    (lambda root: "nosuchprotocol://bucket/shards", "cannot read nosuchprotocol://bucket/shards"),
])
def test_bad_sources_are_one_line_errors(tmp_path, make, message):
    with pytest.raises(DataSourceError, match=message) as info:
        resolve_source(str(make(tmp_path)))
    assert "\n" not in str(info.value)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source,extra,message", [
    ("{tmp}/missing", [], "error: data.source: {tmp}/missing does not exist"),
    # a source that yields nothing: with evaluation on, found when the reference statistics are taken; without,
    # inside the loader
    ("pipe:exit 1", [], "error: data.source: pipe:exit 1 holds 0 images; the evaluation needs at least 2"),
    ("pipe:exit 1", ["eval.every=0"], "error: rank 0 loader worker 0: no readable image"),
])
def test_train_command_exits_2_with_one_line(tmp_path, source, extra, message):
    source, message = source.format(tmp=tmp_path), message.format(tmp=tmp_path)
    result = run_module("distgan.train", "--config", "configs/demo.yaml", "run.mode=local", "train.device=cpu",
                        f"data.source={source}", f"run.root={tmp_path}", "train.steps=2",
                        f"data.cache_dir={tmp_path / 'cache'}", *extra, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr[-2000:]


# --- untrusted sizes: decompression bombs and oversized members -----------------------------------------------------
def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid RGB PNG of width x height black pixels: a few hundred KB on disk, 3 x width x height bytes decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + 3 * width)  # filter byte + pixels
    squeeze = zlib.compressobj(9)
    rows = 256
    idat = [squeeze.compress(row * min(rows, height - start)) for start in range(0, height, rows)] + [squeeze.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(idat)) +
                     chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """20,000 x 20,000 (1.2 GB decoded: Pillow refuses it by itself) and 12,000 x 12,000 (432 MB decoded: inside
    the range where Pillow only warns, so only distgan's own checks stop it)."""
    folder = tmp_path_factory.mktemp("bombs")
    return {"huge": png_bomb(folder / "huge.png", 20_000, 20_000), "large": png_bomb(folder / "large.png", 12_000, 12_000)}


PEAK_MB = 300  # a decoded bomb alone is 432 MB or more; the command itself stays under 100 MB here

MEASURED = """
import sys, runpy
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (pytest, with torch loaded) across exec
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print("peak_mb", peak // 1024, "status", code, file=sys.stderr)
"""


def peak_mb(stderr: str) -> int:
    return int(stderr.rsplit("peak_mb", 1)[1].split()[0])


@pytest.mark.parametrize("bomb", ["huge", "large"])
def test_prepare_skips_and_counts_an_image_bomb_without_decoding_it(tmp_path, bombs, bomb):
    """Peak memory of the whole command stays under PEAK_MB (53 MB measured here; the decoded bomb is 432 MB+)."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    src = tmp_path / "images"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (i * 60, 90, 30)).save(src / f"ok{i}.png")
    (src / "bomb.png").write_bytes(bombs[bomb].read_bytes())
    result = subprocess.run([sys.executable, "-c", MEASURED, "distgan.data.prepare", str(src), str(tmp_path / "out"),
                             "--size", "16", "--workers", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "status 0" in result.stderr, result.stderr[-2000:]
    assert "skipped unreadable input" in result.stderr and "bomb.png" in result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["total"], manifest["skipped"]) == (3, 1)
    assert peak_mb(result.stderr) < PEAK_MB, result.stderr[-500:]


READ_SHARD = """
import sys
from distgan.data.stream import ShardStream
def hwm_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) // 1024
imported = hwm_mb()  # torch alone: about 650 MB here
stream = ShardStream([sys.argv[1]], 4, 16, num_workers=0, resampled=False)
batches = list(stream)
print("images", sum(len(b) for b, _ in batches), "bad", batches[-1][1]["bad"], "reading_mb", hwm_mb() - imported,
      file=sys.stderr)
"""


@pytest.mark.parametrize("bomb", ["huge", "large"])
def test_a_bomb_inside_a_shard_is_a_bad_sample_not_a_decoded_one(tmp_path, bombs, bomb):
    """A shard member that claims 12,000 x 12,000 px is checked against model.image_size before it is decoded: the
    reader's memory grows by less than PEAK_MB (a few MB measured here) while it reads the shard."""
    import subprocess
    import sys

    from conftest import ROOT

    write_shard(str(tmp_path), 0, good("a", 4) + [{"__key__": "bomb", "png": bombs[bomb].read_bytes()}])
    result = subprocess.run([sys.executable, "-c", READ_SHARD, str(tmp_path / shard_name(0))], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert "images 4 bad 1" in result.stderr, result.stderr[-2000:]
    assert int(result.stderr.rsplit("reading_mb", 1)[1].split()[0]) < PEAK_MB, result.stderr[-500:]
    assert "DecompressionBombWarning" not in result.stderr  # the skip line says it


def test_a_tar_member_over_the_cap_ends_the_shard_there(tmp_path, monkeypatch):
    """A header may claim any size: a member over MAX_MEMBER_BYTES is never read into memory; the samples before
    it are kept and the shard is reported like a damaged one."""
    import distgan.data.shards as shards

    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", 4096)
    write_shard(str(tmp_path), 0, good("a", 3) + [{"__key__": "big", "raw": b"\0" * 5000}] + good("b", 2))
    errors: list[str] = []
    got = [s["__key__"] for s in shards.iter_samples(str(tmp_path / shard_name(0)), errors.append)]
    assert got == ["a00", "a01", "a02"]
    assert len(errors) == 1 and "a member of 5000 bytes, over the" in errors[0], errors


@pytest.mark.parametrize("name", ["../elsewhere.tar", "s3://other-bucket/shard.tar", "/etc/passwd",
                                  "pipe:curl http://x", "sub/../../up.tar"])
def test_a_manifest_cannot_point_outside_its_folder(tmp_path, name):
    """A shared manifest.json names files in its own folder only: a name with `..`, a scheme, pipe: or an absolute
    path is one line, and nothing is opened."""
    write_manifest(str(tmp_path), Manifest([{"name": name, "count": 1}], 1, SIZE, 3, "png"))
    with pytest.raises(DataSourceError, match=r"shard name .* is not a file in the manifest's folder") as info:
        resolve_source(str(tmp_path))
    assert "\n" not in str(info.value)


def pax_record_tar(path: Path, record: bytes) -> Path:
    def member(name: str, data: bytes, kind: bytes) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.type = len(data), kind
        return info.tobuf(format=tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)

    good_png = encode_image(Image.new("RGB", (SIZE, SIZE)), "png")
    path.write_bytes(member("a.png", good_png, tarfile.REGTYPE) + member("pax", record, tarfile.XHDTYPE) +
                     member("b.png", good_png, tarfile.REGTYPE) + b"\0" * 1024)
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("record", [b"0 mtime=1\n", b"99 path=x\n"])
def test_a_pax_record_that_lies_about_its_length_ends_the_shard_not_the_reader(tmp_path, record):
    """A record length of 0 never advanced the parser: every reader of the shard spun forever."""
    from distgan.data.shards import iter_samples

    errors: list[str] = []
    keys = [s["__key__"] for s in iter_samples(str(pax_record_tar(tmp_path / "s.tar", record)), errors.append)]
    assert keys == ["a"] and "a pax record of length" in errors[0]


def test_a_sample_with_too_many_members_ends_the_shard(tmp_path):
    """Members of one key pile up in one sample: a cap on their number bounds a sample's memory too."""
    from distgan.data.shards import MAX_SAMPLE_MEMBERS, iter_samples

    write_shard(str(tmp_path), 0, good("a", 2) + [{"__key__": "wide", **{f"e{i}": b"x" for i in range(20)}}])
    errors: list[str] = []
    keys = [s["__key__"] for s in iter_samples(str(tmp_path / shard_name(0)), errors.append)]
    assert keys == ["a00", "a01"] and f"more than {MAX_SAMPLE_MEMBERS} members" in errors[0]


def test_a_manifest_that_claims_more_images_than_its_shards_hold_is_one_line(tmp_path):
    """Evaluation pads every rank to the manifest's count: a count of 10**12 on a 10 KB shard would pad for days."""
    from distgan.data.validation import ValidationStream

    count = write_shard(str(tmp_path), 0, good("a", 2))
    write_manifest(str(tmp_path), Manifest([{"name": shard_name(0), "count": 10**12}], 10**12, SIZE, 3, "png"))
    with pytest.raises(DataSourceError, match=r"says 1000000000000 images in .*shard-000000.tar, more than its"):
        ValidationStream.from_source(str(tmp_path), 4, SIZE)
    assert count == 2
