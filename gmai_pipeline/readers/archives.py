"""Archives inside a download: found, named, and unpacked only on request (`reader.unpack`).

Unpacked files appear exactly where `unzip`/`tar -x` beside the archive would put them (paths relative
to the dataset folder), but live in a cache under the output root (`unpacked/<dataset>/`), so the raw
folder stays read-only and the templates are written once for both cases. The cache is keyed by the
archive's MD5 (from the manifest): a second run reuses it without re-hashing.

Verification (the same promise as for raw files, `ReaderContext.read`): an archive is read through a
verified descriptor, so its bytes must have the MD5 the source scan recorded before anything is
unpacked (`content_changed` otherwise, and nothing is cached); each member's MD5 is computed while
it is written to the cache and recorded beside it, and every later read of a member checks it
against that record, opening the cached file without following links. So a member is either
exactly what the scanned archive held, or a quarantine row.

Multi-part archives: `x.zip.001, x.zip.002, ...` and `split`-style `x.tar.gz.aa, .ab, ...` (also
`.part-aa`, `.part01`) are byte-concatenated in order. Spanned zips (`x.z01`, `x.z02`, ..., `x.zip`),
`.7z` and `.rar` cannot be read here: the error says how to turn them into a plain archive.
Members that would land outside the cache (absolute paths, `..`), links, `__MACOSX/` and dot-files
are skipped, as the manifest scan skips them in the raw folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from gmai_pipeline.decode_guard import is_output_failure
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason

if TYPE_CHECKING:
    from gmai_pipeline.readers.base import ReaderContext

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
UNSUPPORTED_SUFFIXES = (".7z", ".rar")
PART = re.compile(
    r"^(?P<base>.+?(?:\.zip|\.tar|\.tar\.gz|\.tgz|\.tar\.bz2|\.tar\.xz))\.(?:part[-_]?)?(?P<part>\d{2,3}|[a-z]{2})$",
    re.IGNORECASE,
)
SPANNED = re.compile(r"^(?P<base>.+)\.z\d{2}$", re.IGNORECASE)
MARKER = ".unpacked.json"


class ArchiveError(Exception):
    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class Archive:
    name: str  # the archive as the user knows it (`RawData.zip`, `images.tar.gz` for its parts)
    parts: list[str] = field(default_factory=list)  # manifest paths, in order
    problem: str | None = None  # why it cannot be read here, with the fix


def find_archives(paths: Iterable[str]) -> list[Archive]:
    """Archives in the manifest, multi-part ones grouped, in name order."""
    found: dict[str, Archive] = {}
    for rel in sorted(paths):
        low = rel.lower()
        m = PART.match(rel)
        if m:
            found.setdefault(m.group("base"), Archive(m.group("base"))).parts.append(rel)
        elif SPANNED.match(rel):
            base = SPANNED.match(rel).group("base") + ".zip"  # type: ignore[union-attr]
            a = found.setdefault(base, Archive(base))
            a.parts.append(rel)
            a.problem = (
                f"{base} is a spanned zip ({rel}, ...): join it first with "
                f"`zip -s 0 {PurePosixPath(base).name} --out joined.zip`, or unpack it with 7-Zip"
            )
        elif low.endswith(ARCHIVE_SUFFIXES) and not low.endswith(".nii.gz"):
            found.setdefault(rel, Archive(rel)).parts.append(rel)  # a spanned set's .zip joins its parts
        elif low.endswith(UNSUPPORTED_SUFFIXES):
            found[rel] = Archive(
                rel, [rel], f"{rel}: {rel.rsplit('.', 1)[-1]} archives are not read here; unpack it by hand"
            )
    return sorted(found.values(), key=lambda a: a.name)


def _safe_member(name: str) -> str | None:
    rel = PurePosixPath(name.replace("\\", "/"))
    parts = [p for p in rel.parts if p not in ("", ".")]
    if not parts or rel.is_absolute() or ".." in parts or parts[0] == "__MACOSX":
        return None
    if any(p.startswith(".") for p in parts):
        return None
    return "/".join(parts)


def _write_member(src: IO[bytes], dest: Path, rel: str, files: dict[str, str]) -> None:
    """Copy one member into the cache, hashing it on the way (its MD5 is what later reads check)."""
    target = dest / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.md5(usedforsecurity=False)
    with open(target, "wb") as out:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
    files[rel] = h.hexdigest()


def _extract_zip(f: IO[bytes], dest: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    with zipfile.ZipFile(f) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            rel = _safe_member(info.filename)
            if rel is None or (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink member
                continue
            with zf.open(info) as src:
                _write_member(src, dest, rel, files)
    return files


def _extract_tar(f: IO[bytes], dest: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    with tarfile.open(fileobj=f) as tf:
        for member in tf:
            if not member.isfile():
                continue  # directories are implied; links and devices are refused
            rel = _safe_member(member.name)
            if rel is None:
                continue
            src = tf.extractfile(member)
            if src is None:
                continue
            with src:
                _write_member(src, dest, rel, files)
    return files


@contextlib.contextmanager
def _verified(ctx: ReaderContext, archive: Archive, work: Path):
    """The archive's bytes as one file object, every part verified against the manifest's MD5 first."""
    if len(archive.parts) == 1:
        with ctx.open(archive.parts[0]) as f:
            yield f
        return
    joined = work / PurePosixPath(archive.name).name
    with open(joined, "wb") as out:
        for part in archive.parts:
            with ctx.open(part) as src:
                shutil.copyfileobj(src, out, 1 << 20)
    try:
        with open(joined, "rb") as f:
            yield f
    finally:
        joined.unlink()


Members = dict[str, tuple[Path, str, str]]  # dataset path -> (cache folder, member path, MD5)


def unpack(ctx: ReaderContext, archive: Archive, cache: Path) -> Members:
    """Unpack one archive into `cache` (module docstring); ArchiveError on failure."""
    if archive.problem:
        raise ArchiveError(Reason.UNSUPPORTED_CODEC, archive.problem)
    parent = str(PurePosixPath(archive.name).parent)
    parent = "" if parent == "." else parent
    key = "+".join(ctx.md5(p) or "?" for p in archive.parts)
    home = cache / re.sub(r"[^A-Za-z0-9._-]+", "_", archive.name)
    marker = home / MARKER
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("key") == key:
            return _members(parent, home, saved["files"])
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
    try:
        files_dir = work / "files"
        files_dir.mkdir()
        with _verified(ctx, archive, work) as f:
            if archive.name.lower().endswith(".zip"):
                files = _extract_zip(f, files_dir)
            else:
                files = _extract_tar(f, files_dir)
        (work / MARKER).write_text(json.dumps({"key": key, "files": dict(sorted(files.items()))}))
        if home.exists():
            shutil.rmtree(home)
        os.replace(work, home)
    except ImageError as err:  # a part changed or was swapped since the scan: nothing is cached
        shutil.rmtree(work, ignore_errors=True)
        raise ArchiveError(err.reason, err.detail) from None
    except Exception as exc:  # noqa: BLE001 - zipfile/tarfile/zlib raise many types for a damaged archive
        shutil.rmtree(work, ignore_errors=True)
        if is_output_failure(exc):
            raise  # the cache cannot be written (disk full, read-only): a fault of the run
        # The type only: messages quote member names, which can be patient folders.
        raise ArchiveError(
            Reason.UNREADABLE, f"{archive.name}: cannot be unpacked ({type(exc).__name__})"
        ) from None
    return _members(parent, home, files)


def _members(parent: str, home: Path, files: dict[str, str]) -> Members:
    folder = (home / "files").resolve()
    return {_rel(parent, r): (folder, r, m) for r, m in files.items()}


def _rel(parent: str, member: str) -> str:
    return f"{parent}/{member}" if parent else member
