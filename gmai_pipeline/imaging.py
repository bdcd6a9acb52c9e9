"""The image store: how a source image becomes a file under `images/{dim}/{task}/{modality}/{dataset}/`.

Rules (the paper deduplicates on the MD5 of image bytes, so bytes matter):
- A PNG or JPEG that needs no change (8-bit mode, longest side within the cap) is copied byte for
  byte, so `image_md5` equals the source file's MD5. It is still validated: a PNG's chunk CRCs and
  its IEND are checked and its image data inflated (nothing kept) to the exact size IHDR
  declares, in one pass over its chunks (`check_png`); a JPEG's entropy-coded data is decoded at 1/8 scale by libjpeg-turbo in
  strict mode, which finds truncation at a fraction of a full decode.
- Anything else (other formats, 16-bit or float pixels, palette/CMYK modes, too large) is decoded,
  converted to 8-bit L/RGB(A), resized so the longest side fits the cap, and encoded as PNG at
  compression level 1 (about 10x faster than the default level for a few % more bytes).
- Checks before and while decoding (`decode_guard`): the declared size (width x height x bytes
  per pixel, from the header) is reserved from the decode budget before any pixel is decoded, so an
  image over `GMAI_DECODE_BUDGET_MB` is `too_large` and images decoded on the worker threads share
  the budget; a JPEG is decoded by libjpeg-turbo in strict mode (`simplejpeg`: at 1/8 scale for the
  copy check; a grey or RGB JPEG that is re-encoded is decoded once, strictly, for its pixels), so
  data that ends early is `truncated` even when an end marker follows (Pillow fills the rest with
  grey); a PNG's zlib stream must end and inflate to exactly the size its
  header declares; float pixels that are NaN or infinite are left out of the intensity window and
  stored black (an image with no finite pixel is `non_finite`).
- The stored name keeps the source's relative path; its suffix always says the stored format
  (JPEG bytes in a file called `x.png` are stored as `x.png.jpg`), and a name component longer
  than the filesystem allows is shortened with a hash of the full name.
- Boxes are in pixels of the stored image, half-open: `[x0, y0, x1, y1]` with
  `0 <= x0 < x1 <= width`, `0 <= y0 < y1 <= height` (SAM-Med2D's regionprops convention).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import math
import os
import re
import struct
import zlib
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from gmai_pipeline.decode_guard import DecodeBudget, ImageError, decoder_failure
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.storage import md5_bytes, temp_tag

__all__ = ["ImageError", "ImageStore", "StoredImage", "classify_error", "sample_id", "to_uint8"]

DEFAULT_MAX_SIDE = 1024
PNG_COMPRESS_LEVEL = 1
COPY_MODES = {"PNG": {"1", "L", "LA", "P", "RGB", "RGBA"}, "JPEG": {"L", "RGB"}}
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


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


FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg"}
FORMAT_SUFFIXES = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif")}
NAME_MAX = 255  # bytes in one path component on every filesystem we write to


def fit_name(name: str, limit: int = NAME_MAX) -> str:
    """`name` with any component over `limit` bytes cut and ended with a hash of the whole component."""
    parts = name.split("/")
    out = []
    for part in parts:
        raw = part.encode("utf-8", "surrogateescape")
        if len(raw) <= limit:
            out.append(part)
            continue
        suffix = PurePosixPath(part).suffix if len(PurePosixPath(part).suffix) <= 16 else ""
        digest = "~" + md5_bytes(raw)[:16]
        room = limit - len(digest.encode()) - len(suffix.encode())
        head = raw[:room].decode("utf-8", "ignore")
        out.append(head + digest + suffix)
    return "/".join(out)


@functools.lru_cache(maxsize=256)
def modality_slug(modality: str) -> str:
    """'X-Ray' -> 'x-ray', 'Natural Image' -> 'natural-image' (the release's lowercase folder names)."""
    return re.sub(r"[^a-z0-9-]+", "-", modality.strip().lower()).strip("-")


def id_path(rel_path: str) -> str:
    """The path part of a sample id: `/` -> `#`, after `%` -> `%25` and `#` -> `%23`.

    Ordinary paths (no `#`, no `%`) read exactly as GMAI-VL's `{relative path with / -> #}`; the
    escapes make the mapping one-to-one, so `a#b.png` (`a%23b.png`) and `a/b.png` (`a#b.png`) differ.
    """
    return rel_path.replace("%", "%25").replace("#", "%23").replace("/", "#")


def sample_id(
    dim: str, task: str, slug: str, dataset: str, rel_path: str, axis: str | None = None, index=None
) -> str:
    """`{dim}#{task}#{modality}#{dataset}#{path}` (`id_path`), plus `#{axis}{index}` for a volume slice."""
    sid = f"{dim}#{task}#{slug}#{dataset}#{id_path(rel_path)}"
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
    """Scale to 0..255: a window [low, high] when given, else the 0.5/99.5 percentiles.

    NaN and infinite values take no part in the percentiles and are stored as 0 (one NaN would
    otherwise make the window NaN and the whole image black); none finite at all is `non_finite`.
    """
    if arr.dtype == np.uint8 and low is None:
        return arr
    floating = arr.dtype.kind == "f"  # only floats can hold NaN or infinity
    if low is None or high is None:
        sample = arr[:: max(1, arr.shape[0] // 256), :: max(1, arr.shape[1] // 256)] if arr.ndim >= 2 else arr
        sample = sample.astype(np.float32)
        if floating:
            sample = sample[np.isfinite(sample)]
            if sample.size == 0:
                finite = np.isfinite(arr)
                if not finite.any():
                    raise ImageError(Reason.NON_FINITE, "no pixel has a finite value (all NaN or infinite)")
                sample = arr[finite].astype(np.float32)
        low, high = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
    if high <= low:
        high = low + 1.0
    out = np.subtract(arr, np.float32(low), dtype=np.float32)  # one float32 copy, scaled in place
    out *= np.float32(255.0 / (high - low))
    if floating and not (np.isfinite(out.min()) and np.isfinite(out.max())):  # NaN/inf propagate
        finite = np.isfinite(out)
        if not finite.any():
            raise ImageError(Reason.NON_FINITE, "no pixel has a finite value (all NaN or infinite)")
        out[~finite] = 0.0
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


# Bytes Pillow keeps per pixel by mode (multi-band 8-bit modes are stored as 4 bytes a pixel).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")  # converted through float32 to 8 bits
# libjpeg-turbo warnings that mean pixel data was lost (strict mode raises on every warning; the
# others, e.g. "N extraneous bytes before marker", are about bytes between segments: decoded again leniently).
_JPEG_DATA_LOST = ("premature end", "bad huffman code", "bad arithmetic code", "instead of rst")
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def declared_bytes(im: Image.Image) -> int:
    """Memory a full decode and 8-bit conversion of `im` takes, from its header alone."""
    pixels = im.width * im.height
    stored = _MODE_BYTES.get(im.mode, 4)
    working = 13 if im.mode in _WIDE_MODES else 4  # array + float32 copies + masks; or a mode conversion
    return pixels * (stored + working)


def decode_jpeg_strict(data: bytes, name: str, colorspace: str = "GRAY", scale: int = 1) -> np.ndarray:
    """Pixels decoded by libjpeg-turbo in strict mode at 1/`scale` (HxWxC uint8); ImageError
    `truncated`/`unreadable` if data is lost. One decode both checks the data and gives the pixels."""
    import simplejpeg

    try:
        return simplejpeg.decode_jpeg(data, colorspace=colorspace, min_factor=scale, strict=True)
    except ValueError as exc:
        msg = str(exc).lower()
        if "premature end" in msg:
            raise ImageError(Reason.TRUNCATED, f"{name}: JPEG data ends before the image does") from None
        if any(k in msg for k in _JPEG_DATA_LOST):
            raise ImageError(Reason.UNREADABLE, f"{name}: corrupt JPEG entropy-coded data") from None
        try:  # a warning about bytes between segments: the pixels are all there
            return simplejpeg.decode_jpeg(data, colorspace=colorspace, min_factor=scale, strict=False)
        except ValueError:
            raise ImageError(Reason.UNREADABLE, f"{name}: JPEG cannot be decoded") from None


def check_jpeg(data: bytes, name: str, scale: int = 8) -> None:
    """Decode with libjpeg-turbo in strict mode at 1/`scale`: ImageError `truncated`/`unreadable` if data is lost."""
    decode_jpeg_strict(data, name, "GRAY", scale)


def _png_expected(width: int, height: int, bits: int, channels: int, interlaced: bool) -> int:
    def size(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * channels * bits + 7) // 8)

    if not interlaced:
        return size(width, height)
    passes = (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    )
    return sum(size((width - x + dx - 1) // dx, (height - y + dy - 1) // dy) for x, y, dx, dy in passes)


def check_png(data: bytes, name: str) -> None:
    """One pass over the chunks: each chunk's CRC and the IEND chunk (what `Image.verify` checks),
    and the image data inflated (nothing kept) to exactly what IHDR declares, its zlib stream ended.

    `Image.verify` inflates nothing, so a stream cut short inside a well-formed chunk would pass it;
    this one pass does both checks with one walk over the bytes. The inflated size is bounded by
    what IHDR declares (the copy path only takes images within the side cap).
    """
    view = memoryview(data)
    size, pos, expected = len(data), 8, None
    idat: list[memoryview] = []
    while True:
        if pos + 12 > size:
            raise ImageError(Reason.TRUNCATED, f"{name}: PNG ends before its IEND chunk")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > size:
            raise ImageError(Reason.TRUNCATED, f"{name}: PNG ends inside a chunk")
        if zlib.crc32(view[pos + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            raise ImageError(Reason.UNREADABLE, f"{name}: a PNG chunk fails its CRC")
        if ctype == b"IHDR" and length >= 13:
            width, height, bits, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, pos + 8)
            expected = _png_expected(width, height, bits, PNG_CHANNELS.get(colour, 4), interlace == 1)
        elif ctype == b"IDAT":
            idat.append(view[pos + 8 : end - 4])
        elif ctype == b"IEND":
            break
        pos = end
    if expected is None:
        raise ImageError(Reason.UNREADABLE, f"{name}: PNG has no image header")
    d = zlib.decompressobj()
    try:
        inflated = len(d.decompress(idat[0] if len(idat) == 1 else b"".join(idat), expected + 1))
    except (zlib.error, IndexError):
        raise ImageError(Reason.UNREADABLE, f"{name}: PNG image data is not a valid zlib stream") from None
    if inflated > expected or d.unconsumed_tail:
        raise ImageError(Reason.UNREADABLE, f"{name}: PNG image data is larger than its header declares")
    if not d.eof or inflated != expected:
        raise ImageError(Reason.TRUNCATED, f"{name}: PNG image data ends before the image does")


def _validate_copy(im: Image.Image, data: bytes, name: str) -> None:
    """Find truncation/corruption without a full decode (see the module docstring)."""
    if im.format == "PNG":
        check_png(data, name)
    else:
        check_jpeg(data, name)


def classify_error(exc: BaseException, name: str) -> ImageError:
    """A Pillow/IO exception as a quarantine reason and a detail naming the file (never the exception text)."""
    if isinstance(exc, UnidentifiedImageError):
        return ImageError(Reason.UNREADABLE, f"{name}: not an image file Pillow recognises")
    return decoder_failure(exc, name, "image")


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
        budget: DecodeBudget | None = None,
    ):
        self.output_root = Path(output_root)
        self.prefix = f"images/{dim}/{task}/{slug}/{dataset}"
        self.max_side = max_side
        self.source_names = source_names  # the dataset's own paths: a re-encoded name must not take one
        self._dirs: set[str] = set()
        self._root = str(self.output_root)
        self._pid = os.getpid()
        self._tag = temp_tag()
        self.budget = budget if budget is not None else DecodeBudget()

    def _target(self, rel_path: str, ext: str | None, keep: tuple[str, ...] = ()) -> str:
        """Stored relative name: the source's relative path, suffix changed to `ext` when re-encoded.

        Decided from the manifest alone, so it is the same whatever order images are stored in:
        `a.bmp` becomes `a.png`, unless the dataset also has a file `a.png`; then `a.bmp.png`.
        """
        name = rel_path
        if keep and name.lower().endswith(keep):
            ext = None  # copied bytes under a name that already says their format
        elif keep:  # copied bytes whose name says another format: keep the name, say the format
            name, ext = rel_path + ext, None
        if ext is not None and not name.lower().endswith(ext):
            base = strip_volume_suffix(name)
            name = (base if base != name else str(PurePosixPath(name).with_suffix(""))) + ext
            if name in self.source_names:
                name = rel_path + ext
        return f"{self.prefix}/{fit_name(name)}"

    def _write(self, target: str, data: bytes) -> None:
        """Atomic like `storage.atomic_write_bytes` (temp name, then rename), minus its per-call
        mkdir and mkstemp: at thousands of small images per second those syscalls show up."""
        path = os.path.join(self._root, target)
        parent, name = os.path.split(path)
        if parent not in self._dirs:
            os.makedirs(parent, exist_ok=True)
            self._dirs.add(parent)
        # Short and tagged (`storage.is_stale_temp`): a name near NAME_MAX must still fit, and a
        # killed run's leftovers are recognised and swept by the next run.
        tmp = os.path.join(
            parent, f".gmai-{md5_bytes(name.encode('utf-8', 'surrogateescape'))[:12]}.{self._tag}.tmp"
        )
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def store_bytes(
        self, data: bytes, rel_path: str, im: Image.Image | None = None, md5: str | None = None
    ) -> StoredImage:
        """Store an encoded 2D image already in memory (`im`: the same bytes already opened lazily;
        `md5`: their MD5 when already known, e.g. verified against the manifest)."""
        try:
            im = im if im is not None else Image.open(io.BytesIO(data))
            width, height = im.size
            if (
                im.format in COPY_MODES
                and im.mode in COPY_MODES[im.format]
                and max(width, height) <= self.max_side
            ):
                _validate_copy(im, data, rel_path)
                target = self._target(rel_path, FORMAT_SUFFIX[im.format], keep=FORMAT_SUFFIXES[im.format])
                self._write(target, data)
                return StoredImage(target, md5 or md5_bytes(data), width, height, width, height)
            with self.budget.reserve(declared_bytes(im), rel_path, f"a {width}x{height} {im.mode} image"):
                if im.format == "JPEG" and im.mode in ("L", "RGB"):  # one strict decode checks and decodes
                    arr = decode_jpeg_strict(data, rel_path, "GRAY" if im.mode == "L" else "RGB")
                    return self.store_pil(Image.fromarray(arr[..., 0] if im.mode == "L" else arr), rel_path)
                if im.format in ("JPEG", "MPO"):
                    check_jpeg(data, rel_path)
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)
                im.load()
                return self.store_pil(im, rel_path)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise ImageError(
                    Reason.NAME_TOO_LONG, f"{rel_path}: the stored path would be too long"
                ) from None
            if exc.errno is not None:  # the bytes are in memory: an errno means writing the output failed
                raise  # (disk full, permissions): the run stops, the input is fine
            raise classify_error(exc, rel_path) from None
        except Exception as exc:  # Pillow raises many types for bad files
            raise classify_error(exc, rel_path) from None

    def store_pil(self, im: Image.Image, rel_path: str, target_name: str | None = None) -> StoredImage:
        source_width, source_height = im.size
        im = _as_8bit(im)
        size = resized_size(source_width, source_height, self.max_side)
        if size != im.size:
            im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        data = encode_png(im)
        target = f"{self.prefix}/{fit_name(target_name)}" if target_name else self._target(rel_path, ".png")
        self._write(target, data)
        return StoredImage(target, md5_bytes(data), size[0], size[1], source_width, source_height)

    def store_array(self, arr: np.ndarray, rel_path: str, target_name: str | None = None) -> StoredImage:
        """Store an 8-bit HxW or HxWx3 array as PNG (volume slices, DICOM pixels)."""
        return self.store_pil(Image.fromarray(np.ascontiguousarray(arr)), rel_path, target_name)
