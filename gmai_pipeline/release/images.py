"""The release's `images/` folder: exactly the images its records name, so the release stands on its own.

The JSONL/JSON-array route (InternVL, XTuner, LLaVA, `training_jobs`) reads `image` paths relative to
an images root. The output root's `images/` also holds every image decontamination removed, so the
release gets its own `images/` holding only the released images: hard links into the store (no second
copy of 5.5M files; a copy only where the filesystem cannot link), each made under a temporary name and
renamed into place. Images no longer released (decontaminated since, or dropped) are removed.
Neither step holds the release's paths in memory: they are sorted on disk, and the folder is walked in
the same order (`sync_images`).

Where only the shards travel (the Hugging Face Hub takes a few thousand files per folder, not millions),
`python -m gmai_pipeline.release.images unpack RELEASE_DIR` rebuilds `images/` from the shards: every
shard sample carries its image's original bytes and, in its `.json` record, the path.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc

from gmai_pipeline.release.records import ReleaseRecords, ReleaseRow, image_relative_to_root
from gmai_pipeline.release.spill import spill_sorted, write_run
from gmai_pipeline.storage import atomic_write_bytes

IMAGES_DIR = "images"
# Filesystems without hard links (or a store on another device): the image is copied instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
RUN_ROWS = 16_384  # (path, file) pairs sorted in memory per spilled run
RUN_BATCH = 512  # pairs per batch of a spilled run: a merge holds about one batch per run
FAN_IN = 32  # runs merged at once
# The path separator inside a sort key: it sorts below every character a file name can hold, so keys in
# sorted order are the files of a depth-first walk that visits each folder's entries by name.
_SEP = "\x00"
_PAIRS = pa.schema([("key", pa.string()), ("file", pa.string())])
_KEYS = pa.schema([("key", pa.string())])


@dataclass
class ImageSync:
    linked: int = 0
    copied: int = 0
    kept: int = 0  # already in place from an earlier run (same file, or a copy of the same size and mtime)
    removed: list[str] = field(default_factory=list)  # relative paths no longer released (the first 10,000)
    removed_count: int = 0  # all of them

    @property
    def images(self) -> int:
        return self.linked + self.copied + self.kept


def _same(src: os.stat_result, dst: os.stat_result) -> bool:
    if (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino):
        return True
    # A copy made where linking failed keeps the source's mtime (copy2): same size and mtime is the same file.
    return src.st_size == dst.st_size and src.st_mtime_ns == dst.st_mtime_ns


def _place(src: Path | str, dst: Path | str) -> bool:
    """Hard-link (else copy) src to dst through a temporary name; True when it had to copy."""
    folder, name = os.path.split(dst)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    copied = False
    try:
        os.link(src, tmp)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        shutil.copy2(src, tmp)
        copied = True
    os.replace(tmp, dst)
    return copied


def _pair_table(rels: list[str], files: list[str]) -> pa.Table:
    """(key, file) rows; the key is the path with _SEP for "/" (a path holding a NUL would alias another)."""
    rel = pa.array(rels, pa.string())
    if pc.any(pc.match_substring(rel, _SEP)).as_py():
        bad = next(r for r in rels if _SEP in r)
        raise ValueError(f"image path {bad!r} holds a NUL character")
    return pa.table({"key": pc.replace_substring(rel, "/", _SEP), "file": pa.array(files, pa.string())})


def _pairs(rows: ReleaseRecords | Iterable[ReleaseRow]) -> Iterator[pa.Table]:
    """(key, file) of every row, a batch at a time. From the table only the `image` column is read: no
    ReleaseRow (and no conversations parsed) per record."""
    if isinstance(rows, ReleaseRecords):
        for table in rows.tables(columns=["image"]):
            images = table.column("image").to_pylist()
            yield _pair_table(
                [image_relative_to_root(i) for i in images], [os.path.join(rows.root, i) for i in images]
            )
        return
    rels: list[str] = []
    files: list[str] = []
    for row in rows:
        rels.append(row.record["image"])
        files.append(row.image_file)
        if len(rels) >= RUN_ROWS:
            yield _pair_table(rels, files)
            rels, files = [], []
    if rels:
        yield _pair_table(rels, files)


def _batches(rows: Iterable[tuple[str, ...]], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Rows of strings as record batches of RUN_BATCH rows."""
    columns: list[list[str]] = [[] for _ in schema]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
        if len(columns[0]) >= RUN_BATCH:
            yield pa.record_batch([pa.array(c, pa.string()) for c in columns], schema=schema)
            columns = [[] for _ in schema]
    if columns[0]:
        yield pa.record_batch([pa.array(c, pa.string()) for c in columns], schema=schema)


def _read(path: Path, *columns: str) -> Iterator[tuple[str, ...]]:
    """The rows of a spilled stream, a batch at a time (not mapped: only one batch is resident)."""
    with pa.OSFile(str(path)) as source:
        for batch in pa.ipc.open_stream(source):
            yield from zip(*(batch.column(c).to_pylist() for c in columns), strict=True)


def _distinct_sorted(table: pa.Table) -> pa.Table:
    table = table.sort_by([("key", "ascending"), ("file", "ascending")])
    key, file = table["key"], table["file"]
    # An image's records sit together: a pair equal to the one before it goes (an aggregation would do the
    # same at twice the memory).
    repeat = pc.and_(pc.equal(key[1:], key[:-1]), pc.equal(file[1:], file[:-1]))
    return table.filter(pa.chunked_array([[True], pc.invert(repeat)])).select(_PAIRS.names)


def _spill(tables: Iterable[pa.Table], folder: Path) -> list[Path]:
    """Sorted runs of the distinct (key, file) pairs of about RUN_ROWS rows each, as Arrow IPC streams.

    Small runs: Arrow's allocator (mimalloc) keeps much of what sorting a large run freed, and what it
    kept grew with the number of runs (runs of 128k pairs: a 196 MB peak at 50k images, 250 MB at 300k;
    runs of 16k pairs: flat)."""
    return spill_sorted(tables, folder, _distinct_sorted, RUN_ROWS, RUN_BATCH, prefix="run-0-")


def _merged(runs: list[Path]) -> Iterator[tuple[str, str]]:
    """The distinct (key, file) pairs of `runs`, in key order; an error when a path names two files."""
    last_key, last_file = None, None
    for key, file in heapq.merge(*(_read(p, "key", "file") for p in runs)):
        if key == last_key:
            if file != last_file:
                raise ValueError(f"image {key.replace(_SEP, '/')} names two files: {last_file} and {file}")
            continue
        last_key, last_file = key, file
        yield key, file


def _sorted_runs(tables: Iterable[pa.Table], folder: Path) -> list[Path]:
    """At most FAN_IN sorted runs of the pairs: runs are merged FAN_IN at a time until so few are left, so
    the final merge holds a bounded number of batches however many runs the release made."""
    runs, level = _spill(tables, folder), 0
    while len(runs) > FAN_IN:
        level += 1
        merged = []
        for start in range(0, len(runs), FAN_IN):
            group = runs[start : start + FAN_IN]
            if len(group) == 1:
                merged.append(group[0])
                continue
            path = folder / f"run-{level}-{len(merged):06d}.arrow"
            merged.append(write_run(path, _PAIRS, _batches(_merged(group), _PAIRS)))
            for done in group:
                done.unlink()
        runs = merged
    return runs


def _placed(pairs: Iterable[tuple[str, str]], base: str, result: ImageSync) -> Iterator[tuple[str]]:
    """Link (else copy) each image into place, in key order, unless it is there already; yields its key."""
    last_parent = None
    for key, file in pairs:
        yield (key,)
        dst = os.path.join(base, key.replace(_SEP, "/"))
        src_stat = os.stat(file)
        try:
            if _same(src_stat, os.stat(dst)):
                result.kept += 1
                continue
        except FileNotFoundError:
            pass
        parent = os.path.dirname(dst)
        if parent != last_parent:
            os.makedirs(parent, exist_ok=True)
            last_parent = parent
        if _place(file, dst):
            result.copied += 1
        else:
            result.linked += 1


def _tree(folder: str, prefix: str = "") -> Iterator[str]:
    """Keys of the files under `folder`, in key order: each folder's entries by name, depth first.

    Like os.walk, a symbolic link to a folder is neither followed nor listed."""
    with os.scandir(folder) as it:
        entries = sorted((e.name, e.is_dir(), e.is_symlink()) for e in it)
    for name, is_dir, is_link in entries:
        if not is_dir:
            yield prefix + name
        elif not is_link:
            yield from _tree(os.path.join(folder, name), prefix + name + _SEP)


def _remove_unreleased(base: str, released: Iterator[str], result: ImageSync) -> None:
    """Remove every file under `base` whose key is not in `released` (sorted): a merge of two sorted streams."""
    wanted = next(released, None)
    for key in _tree(base):
        while wanted is not None and wanted < key:
            wanted = next(released, None)
        if key == wanted:
            continue
        rel = key.replace(_SEP, "/")
        os.unlink(os.path.join(base, rel))
        if len(result.removed) < 10_000:
            result.removed.append(rel)
        result.removed_count += 1


def sync_images(rows: ReleaseRecords | Iterable[ReleaseRow], images_dir: Path) -> ImageSync:
    """Make `images_dir` hold exactly the images of `rows`, at the paths their records name.

    `rows` (the table, a list, or any iterable of ReleaseRows) is read once. Its (path, file) pairs are
    sorted on disk, an external merge sort spilled beside `images_dir`, so memory is bounded by the run
    size and the merge's fan-in, not by the release: each image is placed once, in path order, and a path
    the records name in two ways (two different files) is an error. The folder is then walked in the same
    order, and each file the release does not name is removed.
    """
    result = ImageSync()
    images_dir.mkdir(parents=True, exist_ok=True)
    base = str(images_dir)
    with tempfile.TemporaryDirectory(prefix=".images-sync.", dir=images_dir.parent) as spill:
        folder = Path(spill)
        runs = _sorted_runs(_pairs(rows), folder)
        # The released keys, sorted, written as they are placed: the removal walk reads them back.
        released = write_run(
            folder / "released.arrow", _KEYS, _batches(_placed(_merged(runs), base, result), _KEYS)
        )
        for path in runs:
            path.unlink()
        _remove_unreleased(base, (key for (key,) in _read(released, "key")), result)
    _remove_empty_dirs(images_dir)
    return result


def _remove_empty_dirs(root: Path) -> None:
    """Bottom-up; a folder whose last child was removed a moment ago is empty now, so just try each."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        if not files and Path(folder) != root:
            with contextlib.suppress(OSError):  # not empty: it still holds released images
                os.rmdir(folder)


# --- images back from the shards ------------------------------------------------------------------------


def safe_relative(path: str, where: str) -> PurePosixPath:
    """A record's image path, refused when it could land outside the images folder."""
    rel = PurePosixPath(path)
    if not path or rel.is_absolute() or ".." in rel.parts or "\\" in path:
        raise ValueError(f"{where}: image path {path!r} is not a relative path inside the images folder")
    return rel


def _samples(tar_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of each sample, members grouped by key as WebDataset does."""
    key, members = None, {}
    with tarfile.open(tar_path, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = info.name.rsplit("/", 1)[-1]
            base, _, ext = name.partition(".")
            if base != key and members:
                yield key, members
                members = {}
            key = base
            members[ext] = tar.extractfile(info).read()
    if members:
        yield key, members


def unpack_images(shard_paths: Iterable[Path], images_dir: Path) -> int:
    """Write the image of every shard sample to `images_dir/<record image path>`; returns images written.

    An image already there with the same bytes is left alone; each file is written atomically.
    """
    written = 0
    for tar_path in shard_paths:
        for key, members in _samples(tar_path):
            where = f"{tar_path}: sample {key}"
            if "json" not in members:
                raise ValueError(f"{where}: no .json record")
            record = json.loads(members.pop("json"))
            if len(members) != 1:
                raise ValueError(f"{where}: expected one image member, found {sorted(members)}")
            data = next(iter(members.values()))
            dst = images_dir / safe_relative(str(record.get("image", "")), where)
            with contextlib.suppress(FileNotFoundError):
                if dst.stat().st_size == len(data) and dst.read_bytes() == data:
                    continue
            atomic_write_bytes(dst, data)
            written += 1
    return written


def shard_paths(release_dir: Path) -> list[Path]:
    """The release's shards in index order (`shards.json`); an error naming the file when there are none."""
    index_path = release_dir / "shards.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path}: no shard index; is {release_dir} a release folder?")
    index = json.loads(index_path.read_text())
    paths = [release_dir / index.get("shard_dir", "shards") / e["name"] for e in index["shards"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise FileNotFoundError(f"{index_path}: shards missing: {missing or 'the index lists none'}")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gmai_pipeline.release.images",
        description="Rebuild a release folder's images/ from its WebDataset shards.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    unpack = sub.add_parser("unpack", help="write every shard sample's image to RELEASE_DIR/images/")
    unpack.add_argument("release_dir", type=Path)
    args = parser.parse_args(argv)
    release_dir = args.release_dir
    n = unpack_images(shard_paths(release_dir), release_dir / IMAGES_DIR)
    print(f"{n} images written under {release_dir / IMAGES_DIR}")


if __name__ == "__main__":
    main()
