"""Archives inside a download: found, named, and unpacked only on request (`reader.unpack`).

Unpacked files appear exactly where `unzip`/`tar -x` beside the archive would put them (paths relative
to the dataset folder), but live in a cache under the output root (`unpacked/<dataset>/`), so the raw
folder stays read-only and the templates are written once for both cases. The cache is keyed by the
archive's MD5 (from the manifest): a second run reuses it without re-hashing.

Multi-part archives: `x.zip.001, x.zip.002, ...` and `split`-style `x.tar.gz.aa, .ab, ...` (also
`.part-aa`, `.part01`) are byte-concatenated in order. Spanned zips (`x.z01`, `x.z02`, ..., `x.zip`),
`.7z` and `.rar` cannot be read here: the error says how to turn them into a plain archive.
Members that would land outside the cache (absolute paths, `..`), links, `__MACOSX/` and dot-files
are skipped, as the manifest scan skips them in the raw folder.
"""

from __future__ import annotations

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

from gmai_pipeline.storage import md5_file

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
UNSUPPORTED_SUFFIXES = (".7z", ".rar")
PART = re.compile(
    r"^(?P<base>.+?(?:\.zip|\.tar|\.tar\.gz|\.tgz|\.tar\.bz2|\.tar\.xz))\.(?:part[-_]?)?(?P<part>\d{2,3}|[a-z]{2})$",
    re.IGNORECASE,
)
SPANNED = re.compile(r"^(?P<base>.+)\.z\d{2}$", re.IGNORECASE)
MARKER = ".unpacked.json"


class ArchiveError(Exception):
    def __init__(self, reason: str, detail: str):
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


def _extract_zip(path: Path, dest: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            rel = _safe_member(info.filename)
            if rel is None or (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink member
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def _extract_tar(path: Path, dest: Path) -> None:
    with tarfile.open(path) as tf:
        for member in tf:
            if not member.isfile():
                continue  # directories are implied; links and devices are refused
            rel = _safe_member(member.name)
            if rel is None:
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(member)
            if src is None:
                continue
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def _joined(folder: Path, archive: Archive, work: Path) -> Path:
    if len(archive.parts) == 1:
        return folder / archive.parts[0]
    joined = work / PurePosixPath(archive.name).name
    with open(joined, "wb") as out:
        for part in archive.parts:
            with open(folder / part, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
    return joined


def unpack(folder: Path, archive: Archive, md5s: dict[str, str], cache: Path) -> dict[str, tuple[Path, str]]:
    """Unpack one archive into `cache`; {dataset-relative path: (cached file, MD5)}. ArchiveError on failure."""
    if archive.problem:
        raise ArchiveError("unsupported_codec", archive.problem)
    parent = str(PurePosixPath(archive.name).parent)
    parent = "" if parent == "." else parent
    key = "+".join(md5s.get(p, "?") for p in archive.parts)
    home = cache / re.sub(r"[^A-Za-z0-9._-]+", "_", archive.name)
    marker = home / MARKER
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("key") == key:
            return {_rel(parent, r): (home / "files" / r, m) for r, m in saved["files"].items()}
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
    try:
        src = _joined(folder, archive, work)
        files_dir = work / "files"
        files_dir.mkdir()
        low = archive.name.lower()
        if low.endswith(".zip"):
            _extract_zip(src, files_dir)
        else:
            _extract_tar(src, files_dir)
        files = {
            p.relative_to(files_dir).as_posix(): md5_file(p)
            for p in sorted(files_dir.rglob("*"))
            if p.is_file()
        }
        (work / MARKER).write_text(json.dumps({"key": key, "files": files}))
        if src.parent == work:
            src.unlink()
        if home.exists():
            shutil.rmtree(home)
        os.replace(work, home)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise ArchiveError(
            "unreadable", f"{archive.name}: cannot be unpacked ({type(exc).__name__}: {exc})"
        ) from None
    return {_rel(parent, r): (home / "files" / r, m) for r, m in files.items()}


def _rel(parent: str, member: str) -> str:
    return f"{parent}/{member}" if parent else member
