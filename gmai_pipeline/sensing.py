"""Cheap fingerprints of the raw dataset folders, for the new-data sensor.

The source asset hashes every byte (MD5 manifest); a sensor that ticks every few minutes cannot.
Here a folder's fingerprint is a digest of (relative path, size, mtime) of the same files the
manifest walk sees (`manifest.walk_dataset`: no symlinks followed, special files listed, not read; hidden entries left out here, since they are never inputs), so a
new, removed, resized or touched file changes it, and reading it costs one `stat` per file.
The sensor keeps `{dataset: digest}` as its cursor (JSON) and compares.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gmai_pipeline.manifest import HIDDEN, HIDDEN_FOLDER, Refused, walk_dataset


@dataclass(frozen=True)
class FolderState:
    """What the sensor knows about one raw folder."""

    name: str
    digest: str
    files: int
    bytes: int
    newest_mtime: float | None  # seconds since the epoch; None for an empty folder


def fingerprint_folder(folder: Path) -> FolderState:
    """Digest of (path, size, mtime_ns) of every file `walk_dataset` yields, plus refused entries."""
    h = hashlib.sha256()
    files = 0
    total = 0
    newest: float | None = None
    for item in walk_dataset(folder):
        if isinstance(item, Refused):
            if item.reason in (HIDDEN, HIDDEN_FOLDER):
                continue  # listed by the manifest, never inputs: editor/OS litter must not start runs
            h.update(f"{item.path}\0refused\0{item.reason}\n".encode())
            continue
        h.update(f"{item.path}\0{item.size}\0{item.mtime_ns}\n".encode())
        files += 1
        total += item.size
        mtime = item.mtime_ns / 1e9
        newest = mtime if newest is None else max(newest, mtime)
    return FolderState(folder.name, h.hexdigest(), files, total, newest)


def scan_raw_root(raw_root: Path, names: Iterable[str]) -> dict[str, FolderState]:
    """Fingerprints of the catalogued datasets present under `raw_root` (absent ones are left out)."""
    states: dict[str, FolderState] = {}
    for name in sorted(set(names)):
        folder = raw_root / name
        if folder.is_dir() and not folder.is_symlink():
            states[name] = fingerprint_folder(folder)
    return states


def uncatalogued_folders(raw_root: Path, names: Iterable[str]) -> list[str]:
    """Top-level folders under `raw_root` that no catalog entry claims (reported, never ingested)."""
    if not raw_root.is_dir():
        return []
    known = set(names)
    return sorted(
        p.name
        for p in raw_root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in known
    )


def changed_folders(previous: dict[str, str], current: dict[str, FolderState]) -> list[str]:
    """Datasets whose folder is new since `previous` or whose digest differs from it."""
    return sorted(name for name, state in current.items() if previous.get(name) != state.digest)


def encode_cursor(current: dict[str, FolderState]) -> str:
    return json.dumps({name: state.digest for name, state in sorted(current.items())}, separators=(",", ":"))


def decode_cursor(cursor: str | None) -> dict[str, str]:
    """`{}` for no cursor or an unreadable one (the sensor then treats every folder as first seen)."""
    if not cursor:
        return {}
    try:
        value = json.loads(cursor)
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
