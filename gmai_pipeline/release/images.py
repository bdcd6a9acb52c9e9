"""The release's `images/` folder: exactly the images its records name, so the release stands on its own.

The JSONL/JSON-array route (InternVL, XTuner, LLaVA, `training_jobs`) reads `image` paths relative to
an images root. The output root's `images/` also holds every image decontamination removed, so the
release gets its own `images/` holding only the released images: hard links into the store (no second
copy of 5.5M files; a copy only where the filesystem cannot link), each made under a temporary name and
renamed into place. Images no longer released (decontaminated since, or dropped) are removed.

Where only the shards travel (the Hugging Face Hub takes a few thousand files per folder, not millions),
`python -m gmai_pipeline.release.images unpack RELEASE_DIR` rebuilds `images/` from the shards: every
shard sample carries its image's original bytes and, in its `.json` record, the path.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import shutil
import tarfile
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from gmai_pipeline.release.records import ReleaseRow
from gmai_pipeline.storage import atomic_write_bytes

IMAGES_DIR = "images"
# Filesystems without hard links (or a store on another device): the image is copied instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


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


def released_images(rows: Iterable[ReleaseRow]) -> dict[str, Path]:
    """Relative image path (as the records name it) -> the stored file; one entry per image (in memory)."""
    out: dict[str, Path] = {}
    for row in rows:
        rel = row.record["image"]
        if out.setdefault(rel, row.image_path) != row.image_path:
            raise ValueError(f"image {rel} names two files: {out[rel]} and {row.image_path}")
    return out


def path_hash(rel: str) -> np.uint64:
    """64 bits of BLAKE2b of a relative image path: the release's image set costs 8 bytes per image.

    A numpy uint64, not a Python int: `searchsorted` with an int above 2**63 converted the whole sorted
    array on every call (quadratic: 7 hours at a million images instead of a minute)."""
    return np.frombuffer(hashlib.blake2b(rel.encode("utf-8"), digest_size=8).digest(), dtype="<u8")[0]


def _hashes(rows: Iterable[ReleaseRow]) -> np.ndarray:
    """Sorted, distinct path hashes of the images `rows` name."""
    parts, chunk = [], array("Q")
    for row in rows:
        chunk.append(int(path_hash(row.record["image"])))
        if len(chunk) >= 1 << 20:
            parts.append(np.unique(np.frombuffer(chunk, dtype=np.uint64)))
            chunk = array("Q")
    parts.append(np.unique(np.frombuffer(chunk, dtype=np.uint64)) if len(chunk) else np.zeros(0, np.uint64))
    return np.unique(np.concatenate(parts))


def sync_images(rows: Iterable[ReleaseRow], images_dir: Path) -> ImageSync:
    """Make `images_dir` hold exactly the images of `rows`, at the paths their records name.

    `rows` is read twice (a list, or `ReleaseRecords`): once for the set of released images, kept as
    sorted 64-bit path hashes (8 bytes an image, not a set of path strings), once to place them. A path
    the records name in two ways (two different files) is an error. A file is removed only when its path
    hash is not released; a stale file whose hash collides with a released one (odds about 1 in 10^7 at
    5.5M images) is kept, never a released image removed.
    """
    wanted = _hashes(rows)
    placed = np.zeros(len(wanted), dtype=bool)
    recent: dict[
        int, str
    ] = {}  # the file each recently placed image came from (one image's records are near)
    result = ImageSync()
    images_dir.mkdir(parents=True, exist_ok=True)
    base = str(images_dir)
    made: set[str] = set()
    for row in rows:
        rel = row.record["image"]
        h = path_hash(rel)
        k = int(np.searchsorted(wanted, h))
        if placed[k]:
            if recent.get(h, row.image_file) != row.image_file:
                raise ValueError(f"image {rel} names two files: {recent[h]} and {row.image_file}")
            continue
        placed[k] = True
        if len(recent) >= 65_536:
            recent.clear()
        recent[h] = row.image_file
        dst = os.path.join(base, rel)
        src_stat = os.stat(row.image_file)
        try:
            if _same(src_stat, os.stat(dst)):
                result.kept += 1
                continue
        except FileNotFoundError:
            pass
        parent = os.path.dirname(dst)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            if len(made) >= 65_536:
                made.clear()
            made.add(parent)
        if _place(row.image_file, dst):
            result.copied += 1
        else:
            result.linked += 1
    for folder, _dirs, files in os.walk(base):
        prefix = os.path.relpath(folder, base).replace(os.sep, "/")
        for name in files:
            rel = name if prefix == "." else f"{prefix}/{name}"
            h = path_hash(rel)
            k = int(np.searchsorted(wanted, h))
            if k < len(wanted) and wanted[k] == h:
                continue
            os.unlink(os.path.join(folder, name))
            if len(result.removed) < 10_000:
                result.removed.append(rel)
            result.removed_count += 1
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
