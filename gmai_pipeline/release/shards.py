"""WebDataset tar shards of the release, crash-safe and verifiable.

Records are assigned to shards deterministically (sorted by id, packed up to a target size), so a
rerun plans the same shards: a shard already complete and listed in `shards.json` with the same
plan digest is verified and kept, anything else is rewritten. Each shard is written to a hidden
temporary name, fsynced, renamed, and only then added to the index; a crash leaves no partial
`.tar` and no duplicated sample.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gmai_pipeline.release.records import ReleaseRow, record_json
from gmai_pipeline.storage import atomic_write_text

DEFAULT_TARGET_BYTES = 1_000_000_000
SHARD_PREFIX = "gmai-vl"
INDEX_NAME = "shards.json"
TAR_BLOCK = 512
TAR_MTIME = 0  # fixed member mtime: the same records give byte-identical shards
SINK_BUFFER = 8 << 20
DIRECT_BYTES = 64 << 10
_SLUG = re.compile(r"[^A-Za-z0-9_-]+")


def sample_key(record_id: str, max_slug: int = 96) -> str:
    """WebDataset key of a record: a readable slug plus a short hash of the full id.

    No dots (WebDataset splits key and extension at the first dot) and no slashes; stable because it
    depends only on the id; the hash keeps ids that slug alike apart.
    """
    slug = _SLUG.sub("_", record_id).strip("_")[:max_slug] or "record"
    return f"{slug}-{hashlib.sha256(record_id.encode('utf-8')).hexdigest()[:16]}"


def image_extension(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    if not ext or not ext.isalnum():
        raise ValueError(f"{path}: image has no usable extension")
    return "jpg" if ext == "jpeg" else ext


def _tar_member_bytes(size: int) -> int:
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


@dataclass(frozen=True)
class PlannedShard:
    name: str
    start: int  # index range into the sorted rows
    end: int
    samples: int
    estimated_bytes: int
    plan_sha256: (
        str  # digest of (key, image md5 and size, record json) of every sample: what the shard must hold
    )


def plan_shards(rows: list[ReleaseRow], target_bytes: int, prefix: str = SHARD_PREFIX) -> list[PlannedShard]:
    """Pack the (id-sorted) rows into consecutive shards of about `target_bytes` each."""
    plans: list[PlannedShard] = []
    keys: set[str] = set()
    start, size, digest = 0, 0, hashlib.sha256()

    def close(end: int) -> None:
        nonlocal start, size, digest
        name = f"{prefix}-{len(plans):06d}.tar"
        plans.append(PlannedShard(name, start, end, end - start, size + 2 * TAR_BLOCK, digest.hexdigest()))
        start, size, digest = end, 0, hashlib.sha256()

    for i, row in enumerate(rows):
        key = sample_key(row.id)
        if key in keys:
            raise ValueError(f"sample key collision for id {row.id}: {key}")
        keys.add(key)
        image_size = row.image_path.stat().st_size
        body = record_json(row.record)
        member = _tar_member_bytes(image_size) + _tar_member_bytes(len(body))
        if size and size + member > target_bytes:
            close(i)
        size += member
        digest.update(f"{key}\0{image_extension(row.image_path)}\0{row.image_md5}\0{image_size}\0".encode())
        digest.update(hashlib.sha256(body).digest())
    if start < len(rows):
        close(len(rows))
    return plans


class _HashingSink:
    """File-like sink for tarfile: big buffers handed to a writer thread that hashes (SHA-256) and writes them.

    hashlib and os.write release the GIL, so hashing and disk writes overlap with building the next
    buffer; one FIFO worker keeps the bytes in order. Large writes (image bytes, which tarfile passes through
    uncopied) are queued as they are; small ones (tar headers, JSON) are gathered into buffers. At most
    `depth` items wait in memory.
    """

    def __init__(self, fd: int, buffer_bytes: int = 1 << 20, depth: int = 32):
        self.fd = fd
        self.buf = bytearray()
        self.limit = buffer_bytes
        self.sha256 = hashlib.sha256()
        self.bytes = 0  # written to disk
        self.offset = 0  # accepted from tarfile
        self.error: BaseException | None = None
        self.queue: queue.Queue[bytes | bytearray | None] = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._drain, name="shard-sink", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while (buf := self.queue.get()) is not None:
            if self.error is not None:
                continue  # keep draining so the producer never blocks
            try:
                self.sha256.update(buf)
                view = memoryview(buf)
                while view:
                    view = view[os.write(self.fd, view) :]
                self.bytes += len(buf)
            except BaseException as exc:  # surfaced to the producer
                self.error = exc

    def tell(self) -> int:
        return self.offset

    def write(self, data: bytes) -> int:
        self.offset += len(data)
        if len(data) >= DIRECT_BYTES:  # an image: pass the object itself on, no copy
            self._hand_off()
            self._put(data if isinstance(data, bytes) else bytes(data))
            return len(data)
        self.buf += data
        if len(self.buf) >= self.limit:
            self._hand_off()
        return len(data)

    def _put(self, item: bytes | bytearray) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def _hand_off(self) -> None:
        if self.buf:
            self._put(self.buf)
            self.buf = bytearray()

    def flush(self) -> None:  # tarfile calls it; the real flush is close()
        pass

    def close(self) -> None:
        """Hand off the rest, wait for the worker, and raise its error if it had one."""
        if self.thread.is_alive():
            try:
                self._hand_off()
            finally:
                self.queue.put(None)
                self.thread.join()
        if self.error is not None:
            raise self.error


@functools.cache
def _tar_writer_class() -> type:
    """webdataset's TarWriter on a seekless sink in plain (not stream) tar mode, copying members in one piece.

    Stream mode re-slices every member into 10 KiB records in Python; plain mode writes straight through.
    Built on first use: importing webdataset imports torch, which would slow every Dagster code load.
    """
    import webdataset as wds

    class _TarWriter(wds.TarWriter):
        def __init__(self, sink: _HashingSink):
            super().__init__(sink, encoder=False, mtime=TAR_MTIME, compress=False)
            self.tarstream.copybufsize = 1 << 30

        @staticmethod
        def tarmode(fileobj: Any, compress: bool | str | None = None) -> str:
            return "w"

    return _TarWriter


def iter_samples(rows: list[ReleaseRow]) -> Iterator[dict[str, Any]]:
    """The WebDataset samples of `rows`: the stored image bytes as they are, plus the record as `.json`."""
    for row in rows:
        yield {
            "__key__": sample_key(row.id),
            image_extension(row.image_path): row.image_path.read_bytes(),
            "json": record_json(row.record),
        }


def write_shard(path: Path, rows: list[ReleaseRow], fsync: bool = True) -> dict[str, Any]:
    """Write one shard to a hidden temporary name, then rename; returns its index entry."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sink = _HashingSink(fd)
    try:
        with _tar_writer_class()(sink) as writer:
            for sample in iter_samples(rows):
                writer.write(sample)
        sink.close()
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(BaseException):
            sink.close()
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return {"name": path.name, "samples": len(rows), "bytes": sink.bytes, "sha256": sink.sha256.hexdigest()}


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
    """One SHA-256 stream per core, up to 4 shards at once (each shard also has a reader thread)."""
    return max(1, min(4, os.cpu_count() or 1))


def write_shards(
    rows: list[ReleaseRow],
    shard_dir: Path,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    verify: str = "sha256",
    fsync: bool = True,
    workers: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> ShardResult:
    """Write (or resume) the shards of `rows` into `shard_dir`; `shards.json` goes beside the folder.

    verify: "sha256" re-hashes a kept shard against the index, "size" only compares its size.
    workers: shards written at once (SHA-256 of one stream runs on one core; shards are independent).
    If a shard fails, the shards already finished are indexed before the error is raised.
    """
    if verify not in ("sha256", "size"):
        raise ValueError("verify must be 'sha256' or 'size'")
    shard_dir.mkdir(parents=True, exist_ok=True)
    removed = []
    for tmp in shard_dir.glob(".*.tmp"):  # leftovers of a killed run: never valid
        tmp.unlink()
        removed.append(tmp.name)
    plans = plan_shards(rows, target_bytes)
    old = {e["name"]: e for e in read_index(shard_dir).get("shards", [])}
    done: dict[str, dict[str, Any]] = {}
    todo = []
    for plan in plans:
        if _still_valid(shard_dir / plan.name, old.get(plan.name), plan, verify):
            done[plan.name] = old[plan.name]
        else:
            todo.append(plan)
    kept = len(done)

    def write(plan: PlannedShard) -> dict[str, Any]:
        entry = write_shard(shard_dir / plan.name, rows[plan.start : plan.end], fsync=fsync)
        entry.update(
            first_id=rows[plan.start].id, last_id=rows[plan.end - 1].id, plan_sha256=plan.plan_sha256
        )
        return entry

    def in_order() -> list[dict[str, Any]]:
        return [done[p.name] for p in plans if p.name in done]

    error: BaseException | None = None
    bytes_written = 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="shard") as pool:
        futures = {pool.submit(write, plan): plan for plan in todo}
        for future in as_completed(futures):
            plan = futures[future]
            try:
                entry = future.result()
            except BaseException as exc:
                error = error or exc
                for f in futures:
                    f.cancel()
                continue
            done[plan.name] = entry
            bytes_written += entry["bytes"]
            # Finished shards plus every old entry not replaced yet: each complete .tar on disk stays listed.
            _write_index(shard_dir, in_order() + [e for n, e in old.items() if n not in done], target_bytes)
            log(f"wrote {plan.name}: {entry['samples']} samples, {entry['bytes'] / 1e6:.1f} MB")
    seconds = time.perf_counter() - t0
    if error is not None:
        raise error
    planned_names = {p.name for p in plans}
    for tar in shard_dir.glob("*.tar"):
        if tar.name not in planned_names:
            tar.unlink()
            removed.append(tar.name)
    entries = in_order()
    _write_index(shard_dir, entries, target_bytes)
    return ShardResult(entries, len(todo), kept, removed, bytes_written, seconds if todo else 0.0)


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
