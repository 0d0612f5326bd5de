"""The shard format: plain tars of KEY.EXT members (WebDataset's) and manifest.json, written atomically and read."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem

from distgan.errors import DataSourceError

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
    crop: int = 0  # center crop (px) applied before resizing; 0 = the largest centered square
    skipped: int = 0  # source images that could not be read when the shards were written

    def urls(self, root: str) -> list[str]:
        return [join(root, check_shard_name(s["name"])) for s in self.shards]

    def counts(self) -> list[int]:
        return [int(s["count"]) for s in self.shards]


def check_shard_name(name: str) -> str:
    """Refuses a scheme, pipe:, absolute path or `..`: a manifest names files in its own folder."""
    parts = name.replace("\\", "/").split("/")
    if not name or ":" in name or name.startswith("/") or ".." in parts:
        raise DataSourceError(f"{MANIFEST}: shard name {name!r} is not a file in the manifest's folder (no scheme, "
                              f"no pipe:, no absolute path, no '..')")
    return name


def join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def write_manifest(root: str, manifest: Manifest) -> None:
    fs, path = fsspec.core.url_to_fs(root)
    tmp = join(path, f"{MANIFEST}.{os.getpid()}.tmp")
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


# --- writing ------------------------------------------------------------------------------------------------------
def tar_bytes(samples: Iterable[dict]) -> tuple[bytes, int]:
    """(tar, count) of sample dicts; fixed mtime, owner and mode make the bytes reproducible."""
    buf = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            key = sample["__key__"]
            for ext, data in sample.items():
                if ext.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(data), 0o444, 0
                tar.addfile(info, io.BytesIO(data))
            count += 1
    return buf.getvalue(), count


def write_shard(root: str, index: int, samples: Iterable[dict]) -> int:
    """Write one shard from WebDataset sample dicts; returns the count."""
    fs, path = fsspec.core.url_to_fs(root)
    fs.makedirs(path, exist_ok=True)
    final = join(path, shard_name(index))
    tmp = f"{final}.{os.getpid()}.tmp"  # unique: two processes may write the same demo shard
    data, count = tar_bytes(samples)
    if isinstance(fs, LocalFileSystem):  # on disk before it gets its name: a power loss leaves no short shard
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    else:  # an object store's upload appears whole or not at all
        with fs.open(tmp, "wb") as f:
            f.write(data)
    fs.mv(tmp, final)
    return count


# --- reading ------------------------------------------------------------------------------------------------------
def open_url(url: str):
    """A binary stream: a path, file://, pipe:CMD (webdataset's gopen, exit status checked) or any fsspec URL."""
    if url.startswith("pipe:"):
        import webdataset as wds  # imports torch: only readers pay for it, never prepare's workers

        return wds.gopen(url, "rb")
    if url.startswith("file://"):
        url = url[len("file://"):]
    if "://" not in url:
        return open(url, "rb")
    return fsspec.open(url, "rb").open()


def split_member_name(name: str) -> tuple[Optional[str], str]:
    """"dir/000001.seg.png" -> ("dir/000001", "seg.png"): the key ends at the base name's first dot."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (match.group(1), match.group(2).lower()) if match else (None, "")


BLOCK = 512
# the most bytes a member may hold (a header can claim any size, the reader holds it in memory); images are < 100 KB
MAX_MEMBER_BYTES = 16 << 20
MAX_SAMPLE_MEMBERS = 8  # members of one key held at once (an image and a few labels), so a sample is bounded too


def read_exact(stream, size: int) -> bytes:
    data = stream.read(size)
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            break
        data += more
    return data


def pax_path(records: bytes) -> Optional[str]:
    """The "path" record of a pax extended header ("LEN path=NAME\\n" records), if any."""
    pos = 0
    while pos < len(records):
        space = records.index(b" ", pos)
        length = int(records[pos:space])
        if length < space - pos + 2 or pos + length > len(records):  # a record must hold its own length field
            raise tarfile.ReadError(f"a pax record of length {length}")
        key, _, value = records[space + 1: pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8")
        pos += length
    return None


def tar_members(stream) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each file of an uncompressed tar; checks every header, raises tarfile.ReadError at a short
    stream (docs/workarounds.md)."""
    long_name: Optional[str] = None
    while True:
        header = read_exact(stream, BLOCK)
        if len(header) < BLOCK:
            raise tarfile.ReadError("no end-of-archive marker" if not header else "truncated header")
        if header.count(0) == BLOCK:
            return  # end-of-archive
        stored = int(header[148:156].replace(b"\0", b" ").strip() or b"0", 8)
        if sum(header) - sum(header[148:156]) + 8 * 32 != stored:
            raise tarfile.ReadError("header checksum mismatch")
        size = int(header[124:136].replace(b"\0", b" ").strip() or b"0", 8)
        if size > MAX_MEMBER_BYTES:
            raise tarfile.ReadError(f"a member of {size} bytes, over the {MAX_MEMBER_BYTES >> 20} MiB a shard member "
                                    f"may hold")
        kind = header[156:157]
        data = read_exact(stream, size)
        padding = -size % BLOCK
        if len(data) < size or len(read_exact(stream, padding)) < padding:
            raise tarfile.ReadError(f"member cut short ({len(data)} of {size} bytes)")
        if kind == b"x":
            long_name = pax_path(data) or long_name
        elif kind == b"L":
            long_name = data.rstrip(b"\0").decode("utf-8")
        elif kind in (b"0", b"\0", b"7"):
            name = header[:100].rstrip(b"\0").decode("utf-8")
            prefix = header[345:500].rstrip(b"\0").decode("utf-8") if header[257:262] == b"ustar" else ""
            yield long_name or (f"{prefix}/{name}" if prefix else name), data
            long_name = None
        else:  # directories, links, global pax headers: nothing to read
            long_name = None if kind != b"g" else long_name


class TooManyMembers(tarfile.ReadError):
    """A sample over MAX_SAMPLE_MEMBERS: it is dropped, not kept as a whole one."""


def iter_samples(url: str, on_error: Callable[[str], None]) -> Iterator[dict]:
    """A shard's samples in order ({"__key__", "__url__", EXT: bytes}); damage ends it, with one on_error message."""
    try:
        stream = open_url(url)
    except Exception as exc:
        on_error(f"{url}: cannot open: {exc}")
        return
    sample: Optional[dict] = None
    count = 0
    try:
        members = tar_members(gzip.GzipFile(fileobj=stream) if url.endswith((".gz", ".tgz")) else stream)
        for name, data in members:
            key, ext = split_member_name(name)
            if key is None:
                on_error(f"{url}: skipping member {name!r}: no KEY.EXT name")
                continue
            if sample is not None and (key != sample["__key__"] or ext in sample):
                yield sample  # complete: the next member starts a new sample
                count, sample = count + 1, None
            if sample is None:
                sample = {"__key__": key, "__url__": url}
            if len(sample) - 2 >= MAX_SAMPLE_MEMBERS:
                raise TooManyMembers(f"sample {key!r} has more than {MAX_SAMPLE_MEMBERS} members")
            sample[ext] = data
        if sample is not None:
            yield sample
            count, sample = count + 1, None
        stream.close()  # a pipe: reports a failed command here
    except Exception as exc:
        if sample is not None and not isinstance(exc, TooManyMembers):  # read whole: keep it, report what follows
            yield sample
            count, sample = count + 1, None
        on_error(f"{url}: truncated or corrupt shard after {count} samples: {exc}")
    finally:
        try:
            stream.close()
        except Exception:
            pass


def count_samples(url: str, on_error: Callable[[str], None] = lambda message: None) -> int:
    """Samples in one shard, by reading it through."""
    return sum(1 for _ in iter_samples(url, on_error))
