"""Scan a raw dataset folder into a manifest: relative path, size, MD5 of the bytes.

The manifest is what later steps trust as "the inputs": its fingerprint drives the new-data
sensor, and its row count is the left side of inputs = kept + quarantined.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.progress import Progress
from gmai_pipeline.storage import md5_file

MANIFEST_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("md5", pa.string()),
        ("refused", pa.string()),  # null for a usable file; why it was refused otherwise
    ]
)


class MissingDataError(FileNotFoundError):
    """A dataset's raw folder is absent: the message says where to put it and where to get it."""


@dataclass
class Refused:
    path: str
    reason: str


def missing_data_message(source: SourceDataset, folder: Path) -> str:
    return (
        f"Raw data for '{source.name}' not found: expected the folder {folder}. "
        f"Download '{source.title}' from {source.url or '(no URL known; see the catalog provenance)'} "
        f"(licence: {source.license}) and unpack it there, or set GMAI_RAW_ROOT to the folder that holds '{source.name}/'."
    )


def walk_dataset(folder: Path) -> Iterator[tuple[str, Path] | Refused]:
    """Yield (relative posix path, absolute path) for regular files inside `folder`.

    Symlinks and anything resolving outside the folder are refused, not followed: a link can
    pull in another dataset's (or a patient's) files without anyone seeing it in the catalog.
    """
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        current = Path(dirpath)
        for d in list(dirnames):
            if (current / d).is_symlink():
                dirnames.remove(d)
                yield Refused((current / d).relative_to(root).as_posix(), "symlinked folder refused")
        dirnames.sort()
        for name in sorted(filenames):
            p = current / name
            rel = p.relative_to(root).as_posix()
            if name.startswith("."):
                continue
            if p.is_symlink():
                yield Refused(rel, f"symlink refused (points to {os.readlink(p)})")
                continue
            if not p.resolve().is_relative_to(root):
                yield Refused(rel, "path escapes the dataset folder")
                continue
            yield rel, p


def scan(folder: Path, progress: Progress | None = None) -> list[dict]:
    """Manifest rows; refused paths are kept as rows (with `refused` set) so they reach quarantine.

    `progress` (optional) counts each file, so hashing a large dataset logs its rate as it goes.
    """
    rows: list[dict] = []
    for item in walk_dataset(folder):
        if isinstance(item, Refused):
            rows.append({"path": item.path, "size": 0, "md5": None, "refused": item.reason})
        else:
            rel, p = item
            rows.append({"path": rel, "size": p.stat().st_size, "md5": md5_file(p), "refused": None})
        if progress is not None:
            progress.update()
    return rows


def fingerprint(rows: list[dict]) -> str:
    """A stable digest of the manifest: changes when any file is added, removed or edited."""
    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r["path"]):
        h.update(f"{r['path']}\0{r['size']}\0{r['md5']}\0{r.get('refused')}\n".encode())
    return h.hexdigest()
