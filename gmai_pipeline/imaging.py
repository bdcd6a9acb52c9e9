"""The image store: how a source image becomes a file under `images/{dim}/{task}/{modality}/{dataset}/`.

Rules (DESIGN.md "Contracts"; the paper deduplicates on the MD5 of image bytes, so bytes matter):
- A PNG or JPEG that needs no change (8-bit mode, longest side within the cap) is copied byte for
  byte, so `image_md5` equals the source file's MD5. It is still validated: a PNG's chunk CRCs and
  its IEND are checked (`Image.verify`, no inflate), a JPEG's entropy-coded data is decoded at 1/8
  scale (`Image.draft`), which finds truncation at a fraction of a full decode.
- Anything else (other formats, 16-bit or float pixels, palette/CMYK modes, too large) is decoded,
  converted to 8-bit L/RGB(A), resized so the longest side fits the cap, and encoded as PNG at
  compression level 1 (about 10x faster than the default level for a few % more bytes).
- Boxes are in pixels of the stored image, half-open: `[x0, y0, x1, y1]` with
  `0 <= x0 < x1 <= width`, `0 <= y0 < y1 <= height` (SAM-Med2D's regionprops convention).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from gmai_pipeline.storage import md5_bytes

DEFAULT_MAX_SIDE = 1024
PNG_COMPRESS_LEVEL = 1
COPY_MODES = {"PNG": {"1", "L", "LA", "P", "RGB", "RGBA"}, "JPEG": {"L", "RGB"}}
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


class ImageError(Exception):
    """An input that cannot become an image; `reason` is a quarantine code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class StoredImage:
    image: str  # relative to the output root
    md5: str
    width: int
    height: int
    source_width: int
    source_height: int

    def scale_box(self, box: tuple[float, float, float, float]) -> list[int]:
        """A box in source pixels -> an int box in stored pixels (outward rounding, clipped)."""
        x0, y0, x1, y1 = box
        if self.width == self.source_width and self.height == self.source_height:  # the common case
            out = [math.floor(x0 + 1e-6), math.floor(y0 + 1e-6), math.ceil(x1 - 1e-6), math.ceil(y1 - 1e-6)]
            if 0 <= out[0] < out[2] <= self.width and 0 <= out[1] < out[3] <= self.height:
                return out
        sx = self.width / self.source_width
        sy = self.height / self.source_height
        out = [
            max(0, math.floor(x0 * sx + 1e-6)),
            max(0, math.floor(y0 * sy + 1e-6)),
            min(self.width, math.ceil(x1 * sx - 1e-6)),
            min(self.height, math.ceil(y1 * sy - 1e-6)),
        ]
        if out[2] <= out[0]:
            out[2] = min(self.width, out[0] + 1)
            out[0] = out[2] - 1
        if out[3] <= out[1]:
            out[3] = min(self.height, out[1] + 1)
            out[1] = out[3] - 1
        return out


def modality_slug(modality: str) -> str:
    """'X-Ray' -> 'x-ray', 'Natural Image' -> 'natural-image' (the release's lowercase folder names)."""
    return re.sub(r"[^a-z0-9-]+", "-", modality.strip().lower()).strip("-")


def sample_id(
    dim: str, task: str, slug: str, dataset: str, rel_path: str, axis: str | None = None, index=None
) -> str:
    sid = f"{dim}#{task}#{slug}#{dataset}#{rel_path.replace('/', '#')}"
    return f"{sid}#{axis}{index}" if axis is not None else sid


def strip_volume_suffix(rel_path: str) -> str:
    low = rel_path.lower()
    for suffix in VOLUME_SUFFIXES:
        if low.endswith(suffix):
            return rel_path[: -len(suffix)]
    return rel_path


def box_inside(box: list[int] | None, width: int, height: int) -> bool:
    if box is None:
        return True
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


def to_uint8(arr: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Scale to 0..255: a window [low, high] when given, else the 0.5/99.5 percentiles."""
    if arr.dtype == np.uint8 and low is None:
        return arr
    a = arr.astype(np.float32, copy=False)
    if low is None or high is None:
        sample = a[:: max(1, a.shape[0] // 256), :: max(1, a.shape[1] // 256)] if a.ndim >= 2 else a
        low, high = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
    if high <= low:
        high = low + 1.0
    out = (a - low) * (255.0 / (high - low))
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _validate_copy(im: Image.Image) -> None:
    """Find truncation/corruption without a full decode (see the module docstring)."""
    if im.format == "PNG":
        im.verify()
    else:
        im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()


def classify_error(exc: BaseException, name: str) -> ImageError:
    """A Pillow/IO exception as a quarantine reason and a stable detail naming the file."""
    if isinstance(exc, ImageError):
        return exc
    if isinstance(exc, UnidentifiedImageError):
        return ImageError("unreadable", f"{name}: not an image file Pillow recognises")
    msg = re.sub(r" at 0x[0-9a-fA-F]+", "", str(exc))  # object addresses would make details differ run to run
    if "truncated" in msg.lower() or isinstance(exc, EOFError):
        return ImageError("truncated", f"{name}: truncated file ({msg})")
    if "decoder" in msg.lower() and "not available" in msg.lower():
        return ImageError("unsupported_codec", f"{name}: {msg}")
    return ImageError("unreadable", f"{name}: {type(exc).__name__}: {msg}")


def _as_8bit(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to L, LA, RGB or RGBA with 8-bit samples."""
    if im.mode in ("L", "LA", "RGB", "RGBA"):
        return im
    if im.mode == "1":
        return im.convert("L")
    if im.mode in ("P", "PA"):
        return im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
    if im.mode.startswith("I") or im.mode == "F":
        return Image.fromarray(to_uint8(np.asarray(im)))
    return im.convert("RGB")


def resized_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


class ImageStore:
    """Writes one dataset's images under `images/{dim}/{task}/{modality_slug}/{dataset}/`.

    Safe to call from several threads: names depend only on the path, writes are rename-atomic.
    """

    def __init__(
        self,
        output_root: Path,
        dim: str,
        task: str,
        slug: str,
        dataset: str,
        max_side: int = DEFAULT_MAX_SIDE,
        source_names: Container[str] = (),
    ):
        self.output_root = Path(output_root)
        self.prefix = f"images/{dim}/{task}/{slug}/{dataset}"
        self.max_side = max_side
        self.source_names = source_names  # the dataset's own paths: a re-encoded name must not take one
        self._dirs: set[str] = set()
        self._root = str(self.output_root)
        self._pid = os.getpid()

    def _target(self, rel_path: str, ext: str | None) -> str:
        """Stored relative name: the source's relative path, suffix changed to `ext` when re-encoded.

        Decided from the manifest alone, so it is the same whatever order images are stored in:
        `a.bmp` becomes `a.png`, unless the dataset also has a file `a.png`; then `a.bmp.png`.
        """
        name = rel_path
        if ext is not None and not name.lower().endswith(ext):
            base = strip_volume_suffix(name)
            name = (base if base != name else str(PurePosixPath(name).with_suffix(""))) + ext
            if name in self.source_names:
                name = rel_path + ext
        return f"{self.prefix}/{name}"

    def _write(self, target: str, data: bytes) -> None:
        """Atomic like `storage.atomic_write_bytes` (temp name, then rename), minus its per-call
        mkdir and mkstemp: at thousands of small images per second those syscalls show up."""
        path = os.path.join(self._root, target)
        parent, name = os.path.split(path)
        if parent not in self._dirs:
            os.makedirs(parent, exist_ok=True)
            self._dirs.add(parent)
        tmp = os.path.join(parent, f".{name}.{self._pid}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def store_file(self, path: Path, rel_path: str) -> StoredImage:
        """Store a 2D image file; raises ImageError (unreadable, truncated, unsupported_codec)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError("missing_file", f"{rel_path}: cannot read ({exc.strerror})") from None
        return self.store_bytes(data, rel_path)

    def store_bytes(self, data: bytes, rel_path: str, im: Image.Image | None = None) -> StoredImage:
        """Store an encoded 2D image already in memory (`im`: the same bytes already opened lazily)."""
        try:
            im = im if im is not None else Image.open(io.BytesIO(data))
            width, height = im.size
            if (
                im.format in COPY_MODES
                and im.mode in COPY_MODES[im.format]
                and max(width, height) <= self.max_side
            ):
                _validate_copy(im)
                target = self._target(rel_path, None)
                self._write(target, data)
                return StoredImage(target, md5_bytes(data), width, height, width, height)
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            return self.store_pil(im, rel_path)
        except Exception as exc:  # Pillow raises many types for bad files
            raise classify_error(exc, rel_path) from None

    def store_pil(self, im: Image.Image, rel_path: str, target_name: str | None = None) -> StoredImage:
        source_width, source_height = im.size
        im = _as_8bit(im)
        size = resized_size(source_width, source_height, self.max_side)
        if size != im.size:
            im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        data = encode_png(im)
        target = f"{self.prefix}/{target_name}" if target_name else self._target(rel_path, ".png")
        self._write(target, data)
        return StoredImage(target, md5_bytes(data), size[0], size[1], source_width, source_height)

    def store_array(self, arr: np.ndarray, rel_path: str, target_name: str | None = None) -> StoredImage:
        """Store an 8-bit HxW or HxWx3 array as PNG (volume slices, DICOM pixels)."""
        return self.store_pil(Image.fromarray(np.ascontiguousarray(arr)), rel_path, target_name)
