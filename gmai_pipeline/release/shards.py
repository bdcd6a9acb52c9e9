"""WebDataset tar shards of the release, crash-safe and verifiable.

Records are assigned to shards deterministically (sorted by id, packed up to a target size), so a
rerun plans the same shards: a shard already complete and listed in `shards.json` with the same
plan digest is verified and kept, anything else is rewritten. Each shard is written to a hidden
temporary name, fsynced, renamed, and only then added to the index; a crash leaves no partial
`.tar` and no duplicated sample.

The tar bytes are exactly what `webdataset.TarWriter` writes for the same samples (a test
compares them), produced by `TarShardWriter`, which copies each image once into page-aligned
buffers, hashes them and writes them around the page cache: about twice the throughput of
webdataset's writer, which made shard writing CPU-bound (see `bench/shards.py`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import mmap
import os
import re
import tarfile
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gmai_pipeline.release.records import ReleaseRow, record_json
from gmai_pipeline.storage import atomic_write_text

DEFAULT_TARGET_BYTES = 1_000_000_000
SHARD_PREFIX = "gmai-vl"
INDEX_NAME = "shards.json"
TAR_BLOCK = 512
TAR_MTIME = 0  # fixed member mtime: the same records give byte-identical shards
TAR_MODE = 0o444  # member mode and owner: webdataset.TarWriter's defaults
TAR_OWNER = "bigdata"
SINK_BUFFER = 8 << 20  # each shard writer holds WRITE_DEPTH buffers of this size
WRITE_DEPTH = 4  # buffers per shard: one being filled, the others queued for the disk (rides out slow writes)
# O_DIRECT writes go out in multiples of this: ext4 quietly fell back to buffered I/O for some smaller ones.
DIRECT_ALIGN = 1 << 20
# Zeros for padding: a member's tail (< 512) or the end of the archive, two blocks plus up to a record (< 10,240).
_ZEROS = bytes(2 * TAR_BLOCK + tarfile.RECORDSIZE)
_SLUG = re.compile(r"[^A-Za-z0-9_-]+")


def sample_key(record_id: str, max_slug: int = 96) -> str:
    """WebDataset key of a record: a readable slug plus a short hash of the full id.

    No dots (WebDataset splits key and extension at the first dot) and no slashes; stable because it
    depends only on the id; the hash keeps ids that slug alike apart.
    """
    slug = _SLUG.sub("_", record_id).strip("_")[:max_slug] or "record"
    return f"{slug}-{hashlib.sha256(record_id.encode('utf-8')).hexdigest()[:16]}"


def image_extension(path: Path | str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if not ext or not ext.isalnum():
        raise ValueError(f"{path}: image has no usable extension")
    return "jpg" if ext == "jpeg" else ext


def end_of_archive_bytes(offset: int) -> int:
    """Zeros tarfile writes at close after `offset` bytes of members: two blocks, then up to a whole record."""
    return 2 * TAR_BLOCK + -(offset + 2 * TAR_BLOCK) % tarfile.RECORDSIZE


def _tar_member_bytes(size: int) -> int:
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


class FileMember(NamedTuple):
    """A tar member whose bytes are a file's; `size` (when known) is checked when the file is read."""

    path: Path
    size: int | None = None


@dataclass(frozen=True)
class PlannedSample:
    key: str
    image_ext: str
    image: FileMember
    body: bytes  # the record as JSON


@dataclass(frozen=True)
class PlannedShard:
    name: str
    start: int  # index range into the sorted rows
    end: int
    samples: int
    plan_sha256: str  # digest of (key, image md5 and size, record JSON) of every sample: what it must hold
    contents: tuple[PlannedSample, ...] = field(default=(), repr=False, compare=False)
    first_id: str = ""
    last_id: str = ""


def _key_hash(key: str) -> int:
    """The hash part of a sample key (`sample_key`'s 16 hex digits) as a number: 8 bytes per sample to check."""
    return int(key[-16:], 16)


def iter_plans(
    rows: Iterable[ReleaseRow], target_bytes: int, prefix: str = SHARD_PREFIX, contents: bool = True
) -> Iterator[PlannedShard]:
    """Pack the (id-sorted) rows into consecutive shards of about `target_bytes` each, yielding each as it closes.

    With `contents`, a shard carries its samples (key, image, record JSON) so the writer need not
    compute them again; yielding shard by shard lets writing start before planning ends and keeps
    only the shards in flight in memory. Two records may not share a sample key: checked on the keys'
    hashes (8 bytes a sample) when the plan is complete.
    """
    hashes = array("Q")
    start, size, count, digest, samples, first, last = 0, 0, 0, hashlib.sha256(), [], "", ""

    def close(end: int) -> PlannedShard:
        nonlocal start, size, count, digest, samples
        plan = PlannedShard(
            f"{prefix}-{count:06d}.tar",
            start,
            end,
            end - start,
            digest.hexdigest(),
            tuple(samples),
            first,
            last,
        )
        start, size, count, digest, samples = end, 0, count + 1, hashlib.sha256(), []
        return plan

    for i, row in enumerate(rows):
        key = sample_key(row.id)
        hashes.append(_key_hash(key))
        ext = image_extension(row.image_file)
        image_size = os.stat(row.image_file).st_size
        body = record_json(row.record)
        member = _tar_member_bytes(image_size) + _tar_member_bytes(len(body))
        if size and size + member > target_bytes:
            yield close(i)
        if start == i:
            first = row.id
        last = row.id
        size += member
        digest.update(f"{key}\0{ext}\0{row.image_md5}\0{image_size}\0".encode())
        digest.update(hashlib.sha256(body).digest())
        if contents:
            samples.append(PlannedSample(key, ext, FileMember(Path(row.image_file), image_size), body))
    n = len(hashes)
    if start < n:
        yield close(n)
    _check_keys(hashes)


def _check_keys(hashes: array) -> None:
    keys = np.frombuffer(hashes, dtype=np.uint64) if len(hashes) else np.zeros(0, np.uint64)
    ordered = np.sort(keys)
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(same):
        raise ValueError(
            f"sample key collision: two records share the key hash {int(ordered[same[0]]):016x}; "
            "their ids differ only where sample_key cannot tell them apart"
        )


def plan_shards(
    rows: Iterable[ReleaseRow], target_bytes: int, prefix: str = SHARD_PREFIX
) -> list[PlannedShard]:
    """The whole plan, without contents."""
    return list(iter_plans(rows, target_bytes, prefix, contents=False))


class _BufferPool:
    """Page-aligned buffers reused from shard to shard of one run: fresh pages cost a fault and a zeroing each."""

    def __init__(self, size: int = SINK_BUFFER):
        self.size = size
        self.free: list[mmap.mmap] = []

    def take(self) -> mmap.mmap:
        with contextlib.suppress(IndexError):  # list.pop is atomic: shared by the writer threads
            return self.free.pop()
        return mmap.mmap(-1, self.size)  # anonymous maps are page aligned, as O_DIRECT needs

    def give_back(self, buf: mmap.mmap) -> None:
        self.free.append(buf)

    def close(self) -> None:
        while self.free:
            buf = self.free.pop()
            with contextlib.suppress(BufferError):  # a traceback still holds a view: unmapped when that goes
                buf.close()


class _ShardFile:
    """Tar bytes -> SHA-256 -> disk, assembled in a ring of page-aligned buffers.

    Images are read straight into a buffer (no bytes object per image). A full buffer is hashed by
    the caller and queued for a writer thread while the caller fills the next one (os.write
    releases the GIL). Hashing on a third thread was measured slower: more GIL hand-offs.
    Writes bypass the page cache (O_DIRECT) where the filesystem allows it: a release is written
    once and not read back soon, and pushing terabytes through the cache costs a copy per byte and
    evicts the images still to be read. Direct writes go out in multiples of DIRECT_ALIGN; the tail
    of the file, and any filesystem that refuses direct I/O, takes the ordinary buffered path.
    """

    def __init__(self, fd: int, direct: bool, pool: _BufferPool):
        if pool.size % DIRECT_ALIGN:
            raise ValueError(f"buffer size must be a multiple of {DIRECT_ALIGN}")
        self.fd = fd
        self.direct = direct  # write directly (the fd was opened with O_DIRECT and the filesystem takes it)
        self.fd_direct = direct  # the fd's O_DIRECT flag is set
        self.pool = pool
        self.size = pool.size
        self.buffers = [pool.take() for _ in range(WRITE_DEPTH)]
        self.cur = 0
        self.used = 0  # bytes of the current buffer filled
        self.sha256 = hashlib.sha256()
        self.bytes = 0  # hashed and handed to the writer, in order
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-write")
        self.writes: list[Future[None] | None] = [None] * len(self.buffers)  # in flight, per buffer
        self.closed = False

    @property
    def offset(self) -> int:
        return self.bytes + self.used

    def put(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) <= self.size - self.used:  # the common case: it fits
            self.buffers[self.cur][self.used : self.used + len(data)] = data
            self.used += len(data)
            return
        view = memoryview(data)
        while view:
            if self.used == self.size:
                self._submit(final=False)
            k = min(len(view), self.size - self.used)
            self.buffers[self.cur][self.used : self.used + k] = view[:k]
            self.used += k
            view = view[k:]

    def put_file(self, fd: int, size: int, path: Path) -> None:
        """Append the `size` bytes of the open file `fd`, read straight into the buffer.

        The last read asks for one byte more, so a file that grew is caught without a stat.
        """
        left, probed = size, False
        while left:
            if self.used == self.size:
                self._submit(final=False)
            k = min(left + 1, self.size - self.used)
            probed = k > left
            with memoryview(self.buffers[self.cur]) as buf:
                got = os.readv(fd, [buf[self.used : self.used + k]])
            if not got or got > left:
                raise OSError(f"{path}: not {size} bytes any more (the file changed while being released)")
            self.used += got
            left -= got
        if not probed and os.read(fd, 1):  # empty, or the buffer had no room for the extra byte
            raise OSError(f"{path}: not {size} bytes any more (the file changed while being released)")

    def _submit(self, final: bool) -> None:
        """Hand the filled part of the current buffer on; an unaligned tail moves to the next buffer."""
        n = self.used if final or not self.direct else self.used - self.used % DIRECT_ALIGN
        if n:
            self.writes[self.cur] = self.writer.submit(self._write, self.cur, n, self.direct)
            with memoryview(self.buffers[self.cur]) as buf, buf[:n] as view:
                self.sha256.update(view)
        nxt = (self.cur + 1) % len(self.buffers)
        self._wait(nxt)  # free again once its last write is done (writes finish in order)
        rest = self.used - n
        if rest:
            self.buffers[nxt][:rest] = self.buffers[self.cur][n : self.used]
        self.bytes += n
        self.cur, self.used = nxt, rest

    def _wait(self, index: int) -> None:
        """Wait for the write of buffer `index`; re-raises its error."""
        write, self.writes[index] = self.writes[index], None
        if write is not None:
            write.result()

    def _write(self, index: int, n: int, direct: bool) -> None:
        with memoryview(self.buffers[index]) as buf, buf[:n] as view:
            cut = n - n % DIRECT_ALIGN if direct else 0  # the file's tail goes out buffered
            self._write_all(view[:cut], direct=True)
            self._write_all(view[cut:], direct=False)

    def _write_all(self, view: memoryview, direct: bool) -> None:
        if view and not direct:
            self._buffered()
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.fd_direct:
                    raise
                self._buffered()  # the filesystem took O_DIRECT at open but refuses the I/O
                self.direct = False

    def _buffered(self) -> None:
        """Clear O_DIRECT on the file (only ever set where the platform has it)."""
        if self.fd_direct:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.fd_direct = False

    def close(self, write: bool = True) -> None:
        """Write what is left (unless aborting) and wait for the writer; raises its error."""
        if self.closed:
            return
        self.closed = True
        try:
            if write:
                self._submit(final=True)
            for index in range(len(self.buffers)):
                self._wait(index)
        finally:
            self.writer.shutdown(wait=True)
            for buf in self.buffers:
                self.pool.give_back(buf)


@functools.cache
def _header_template() -> tuple[bytes, int]:
    """The tar header webdataset's TarWriter writes, with name, size and checksum left blank."""
    info = _tarinfo("", 0)
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    header[124:136] = bytes(12)  # size
    header[148:156] = b" " * 8  # checksum field counts as spaces
    return bytes(header), sum(header)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, TAR_MTIME, TAR_MODE, TAR_OWNER, TAR_OWNER
    return info


def tar_header(name: str, size: int) -> bytes | bytearray:
    """The header block(s) of one member, exactly as webdataset.TarWriter (tarfile, PAX format) writes them.

    Short ASCII names (all of ours unless an id is very long) are filled into a template, about ten
    times faster than tarfile; anything else goes through tarfile itself.
    """
    raw = name.encode("ascii", "surrogateescape") if name.isascii() else b""
    if not raw or len(raw) > 100 or size >= 8**11:
        return _tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    template, template_sum = _header_template()
    header = bytearray(template)
    header[: len(raw)] = raw
    size_field = b"%011o\0" % size
    header[124:136] = size_field
    header[148:156] = b"%06o\0 " % (template_sum + sum(raw) + sum(size_field))
    return header


class TarShardWriter:
    """Writes WebDataset samples into one tar file, byte for byte what `webdataset.TarWriter` writes.

    Same member names (`key.ext`, extensions in sorted order), PAX headers, mode 0444, owner
    `bigdata`, fixed mtime, zero padding and end-of-archive record (a test compares the two). It
    exists because webdataset's writer goes through tarfile and BytesIO per member, which made
    shard writing CPU-bound at a third of the disk's speed; this one copies each image once.
    """

    def __init__(self, out: _ShardFile):
        self.out = out

    def write_sample(self, key: str, members: dict[str, bytes | Path | FileMember]) -> None:
        """members: extension -> bytes, or a file (Path or FileMember) whose bytes are the member."""
        small = bytearray()  # headers, padding and bytes members, handed on in one piece per file
        for ext in sorted(members):
            value = members[ext]
            name = f"{key}.{ext}"
            if isinstance(value, (bytes, bytearray)):
                size = len(value)
                small += tar_header(name, size)
                small += value
            else:
                size = self._put_file(
                    name, value if isinstance(value, FileMember) else FileMember(value), small
                )
                small = bytearray()
            if size % TAR_BLOCK:
                small += _ZEROS[: TAR_BLOCK - size % TAR_BLOCK]
        self.out.put(small)

    def _put_file(self, name: str, member: FileMember, before: bytearray) -> int:
        fd = os.open(member.path, os.O_RDONLY)
        try:
            size = (
                os.fstat(fd).st_size if member.size is None else member.size
            )  # a planned size is checked on read
            before += tar_header(name, size)
            self.out.put(before)
            self.out.put_file(fd, size, member.path)
        finally:
            os.close(fd)
        return size

    def close(self) -> None:
        """End-of-archive: two zero blocks, then zeros up to a whole tar record, as tarfile does.

        The padding can exceed one record: an archive ending 512 bytes short of a record boundary gets
        two blocks plus 19 more (tarfile.TarFile.close pads after the two blocks).
        """
        self.out.put(_ZEROS[: end_of_archive_bytes(self.out.offset)])
        self.out.close()


def open_for_shard(path: Path, direct: bool) -> tuple[int, bool]:
    """A new file for writing, and whether it is open with O_DIRECT (asked for, and the filesystem takes it)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o644), True
        except OSError as exc:  # tmpfs and some network filesystems refuse O_DIRECT
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o644), False


def write_shard(
    path: Path,
    plan: PlannedShard,
    fsync: bool = True,
    direct: bool = True,
    buffers: _BufferPool | None = None,
) -> dict[str, Any]:
    """Write one planned shard to a hidden temporary name, then rename; returns its index entry.

    Each sample is the stored image, as it is, plus the record as `.json`. direct: bypass the page
    cache where the filesystem allows it (see `_ShardFile`); buffers: reused across shards.
    """
    if len(plan.contents) != plan.samples:
        raise ValueError(f"{plan.name}: planned without contents")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd, direct = open_for_shard(tmp, direct)
    out = _ShardFile(fd, direct, buffers or _BufferPool())
    try:
        writer = TarShardWriter(out)
        for sample in plan.contents:
            writer.write_sample(sample.key, {sample.image_ext: sample.image, "json": sample.body})
        writer.close()
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(BaseException):
            out.close(write=False)
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return {"name": path.name, "samples": plan.samples, "bytes": out.bytes, "sha256": out.sha256.hexdigest()}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(SINK_BUFFER):
            h.update(chunk)
    return h.hexdigest()


def read_index(shard_dir: Path) -> dict[str, Any]:
    path = shard_dir.parent / INDEX_NAME
    if not path.exists():
        return {"shards": []}
    return json.loads(path.read_text())


def _write_index(shard_dir: Path, entries: list[dict[str, Any]], target_bytes: int) -> None:
    index = {
        "format": "webdataset",
        "shard_dir": shard_dir.name,
        "target_shard_bytes": target_bytes,
        "samples": sum(e["samples"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
        "shards": entries,
    }
    atomic_write_text(shard_dir.parent / INDEX_NAME, json.dumps(index, indent=1) + "\n")


def _still_valid(path: Path, entry: dict[str, Any] | None, plan: PlannedShard, verify: str) -> bool:
    if entry is None or entry.get("plan_sha256") != plan.plan_sha256 or entry.get("samples") != plan.samples:
        return False
    if not path.is_file() or path.stat().st_size != entry["bytes"]:
        return False
    return verify == "size" or sha256_file(path) == entry["sha256"]


@dataclass
class ShardResult:
    shards: list[dict[str, Any]]
    written: int  # shards written in this run
    kept: int  # complete shards verified and kept from an earlier run
    removed: list[str]  # stale files removed (temporaries, shards no longer planned)
    bytes_written: int
    seconds_writing: float

    @property
    def samples(self) -> int:
        return sum(s["samples"] for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s["bytes"] for s in self.shards)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / self.seconds_writing if self.seconds_writing > 0 else 0.0


def default_workers() -> int:
    """One shard more than cores, at most 4 at once.

    A shard's thread hashes (one core) and waits on reads, writes and the GIL in turn; one spare
    shard fills those gaps (2 cores: 3 shards wrote 5-9% faster than 2 in `bench/shards.py`).
    """
    return max(1, min(4, (os.cpu_count() or 1) + 1))


def write_shards(
    rows: Iterable[ReleaseRow],
    shard_dir: Path,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    verify: str = "sha256",
    fsync: bool = True,
    workers: int | None = None,
    direct: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> ShardResult:
    """Write (or resume) the shards of `rows` into `shard_dir`; `shards.json` goes beside the folder.

    verify: "sha256" re-hashes a kept shard against the index, "size" only compares its size.
    workers: shards written at once (SHA-256 of one stream runs on one core; shards are independent).
    direct: write around the page cache where the filesystem allows it (see `_ShardFile`).
    Planning runs ahead of the writers by one shard each; kept shards are verified on the writers'
    threads. If a shard fails, the shards already finished are indexed before the error is raised.
    """
    if verify not in ("sha256", "size"):
        raise ValueError("verify must be 'sha256' or 'size'")
    shard_dir.mkdir(parents=True, exist_ok=True)
    removed = []
    for tmp in shard_dir.glob(".*.tmp"):  # leftovers of a killed run: never valid
        tmp.unlink()
        removed.append(tmp.name)
    old = {e["name"]: e for e in read_index(shard_dir).get("shards", [])}
    workers = workers or default_workers()
    planned: list[str] = []  # shard names in order
    done: dict[str, dict[str, Any]] = {}
    kept = written = bytes_written = 0
    error: BaseException | None = None

    def write(plan: PlannedShard) -> dict[str, Any]:
        entry = write_shard(shard_dir / plan.name, plan, fsync=fsync, direct=direct, buffers=buffers)
        entry.update(first_id=plan.first_id, last_id=plan.last_id, plan_sha256=plan.plan_sha256)
        return entry

    def settle(plan: PlannedShard) -> tuple[bool, dict[str, Any]]:
        """(kept, entry): the complete shard of an earlier run, verified, or the shard written now.

        On the writers' threads, so a rerun verifies kept shards in parallel, not one by one.
        """
        if _still_valid(shard_dir / plan.name, old.get(plan.name), plan, verify):
            return True, old[plan.name]
        return False, write(plan)

    def in_order() -> list[dict[str, Any]]:
        return [done[name] for name in planned if name in done]

    def collect(finished: set[Future[tuple[bool, dict[str, Any]]]]) -> None:
        nonlocal error, kept, written, bytes_written
        for future in finished:
            plan = running.pop(future)
            try:
                was_kept, entry = future.result()
            except BaseException as exc:
                error = error or exc
                continue
            done[plan.name] = entry
            if was_kept:
                kept += 1
                continue
            written += 1
            bytes_written += entry["bytes"]
            # Finished shards plus every old entry not replaced yet: each complete .tar on disk stays listed.
            _write_index(shard_dir, in_order() + [e for n, e in old.items() if n not in done], target_bytes)
            log(f"wrote {plan.name}: {entry['samples']} samples, {entry['bytes'] / 1e6:.1f} MB")

    running: dict[Future[tuple[bool, dict[str, Any]]], PlannedShard] = {}
    buffers = _BufferPool()
    t0 = time.perf_counter()
    with (
        contextlib.closing(buffers),
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard") as pool,
    ):
        try:
            for plan in iter_plans(rows, target_bytes):
                planned.append(plan.name)
                while len(running) > workers:  # one shard planned ahead per writer, no more, in memory
                    collect(wait(running, return_when=FIRST_COMPLETED).done)
                if error is not None:
                    break
                running[pool.submit(settle, plan)] = plan
        except BaseException as exc:  # a planning error (key collision, unreadable image) ends the run too
            error = exc
        collect(wait(running).done)
    seconds = time.perf_counter() - t0
    if error is not None:
        raise error
    planned_names = set(planned)
    for tar in shard_dir.glob("*.tar"):
        if tar.name not in planned_names:
            tar.unlink()
            removed.append(tar.name)
    entries = in_order()
    _write_index(shard_dir, entries, target_bytes)
    return ShardResult(entries, written, kept, removed, bytes_written, seconds if written else 0.0)


def verify_shards(shard_dir: Path, hash_files: bool = True) -> list[str]:
    """Problems found comparing the shard files with `shards.json` (empty: all good); hash_files re-hashes each."""
    index = read_index(shard_dir)
    problems = []
    listed = {e["name"] for e in index["shards"]}
    for entry in index["shards"]:
        path = shard_dir / entry["name"]
        if not path.is_file():
            problems.append(f"{entry['name']}: missing")
        elif path.stat().st_size != entry["bytes"] or (hash_files and sha256_file(path) != entry["sha256"]):
            problems.append(f"{entry['name']}: size or sha256 differs from the index")
    problems += [f"{p.name}: not in the index" for p in shard_dir.glob("*.tar") if p.name not in listed]
    problems += [f"{p.name}: leftover temporary file" for p in shard_dir.glob(".*.tmp")]
    return problems
