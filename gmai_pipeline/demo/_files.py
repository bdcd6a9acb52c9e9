"""Writing demo datasets: atomic per dataset, idempotent, byte-for-byte deterministic.

A dataset folder appears under its final name only once every file is written (built in a
hidden temporary folder beside it, then renamed), so a crash or a concurrent run never leaves a
half-written dataset that the manifest would fingerprint as real data.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

# Bump when any builder's output changes: an older generated folder is then rebuilt.
DEMO_VERSION = "1"
MARKER = ".gmai_demo"  # dotfiles are skipped by the manifest scan, so the marker is not an input


def png_bytes(arr: np.ndarray) -> bytes:
    """PNG bytes; Pillow writes no timestamp, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray | Image.Image, quality: int = 90) -> bytes:
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def is_complete(folder: Path) -> bool:
    marker = folder / MARKER
    return marker.is_file() and marker.read_text().strip() == DEMO_VERSION


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    for rel, data in sorted(files.items()):
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def build_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp_folder)` and rename the result to `target`, unless a complete copy exists.

    A folder without our marker is left alone: it is data someone put there on purpose.
    An older demo version (marker differs) is replaced.
    """
    if is_complete(target):
        return target
    if target.exists() and not (target / MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        build(tmp)
        (tmp / MARKER).write_text(DEMO_VERSION + "\n")
        if target.exists():  # stale demo version: move it aside, then remove it
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, stale / target.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete(target):  # lost a race to a broken writer: surface it
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return target
