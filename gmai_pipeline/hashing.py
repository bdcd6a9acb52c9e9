"""Image fingerprints for decontamination: byte MD5, decoded-pixel MD5, dHash and pHash.

- Byte MD5 is the paper's method; it misses any re-encode.
- Pixel MD5 hashes the decoded pixels after canonicalising the mode, so a lossless re-encode
  (PNG <-> TIFF/BMP, a grey picture saved as RGB) still matches.
- dHash (64-bit gradient signs of a 9x8 thumbnail) survives JPEG re-encoding and resizing; it is
  the primary perceptual hash. pHash (signs of the 8x8 low-frequency DCT vs its median) is the
  second opinion: it flips many bits on left-right symmetric images, so it only vetoes far-off
  candidates, never decides alone (`tests/test_hashing.py` holds both to these roles on scikit-image pictures).

Both perceptual hashes follow ImageHash's definitions (`imagehash.dhash`, `imagehash.phash`) but
downscale with Pillow's `reducing_gap` (a box pre-reduction before the Lanczos pass), which is
about 7x faster on a 512x512 image and within a bit or two of ImageHash's values. Hashes are
stored as signed int64 (the uint64 bit pattern) so Parquet and numpy carry them natively.

Near-flat images (thumbnail range below `FLAT_RANGE` grey levels) get no perceptual hash (None):
their gradient signs are noise, and all-black images would otherwise "match" each other.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Pillow refuses very large images by default (decompression-bomb guard); benchmark and training
# images are trusted local files, but keep a generous ceiling rather than none.
Image.MAX_IMAGE_PIXELS = 400_000_000

FLAT_RANGE = 8  # grey levels on the 32x32 thumbnail below which an image counts as flat
_RESAMPLE = Image.Resampling.LANCZOS
_REDUCING_GAP = 2.0


@dataclass(frozen=True)
class ImageHashes:
    md5: str
    pixel_md5: str
    dhash: int | None  # signed int64 bit pattern; None for near-flat images
    phash: int | None
    width: int
    height: int


class ImageDecodeError(ValueError):
    """The bytes are not an image Pillow can decode; the message says why."""


def to_int64(bits: np.ndarray) -> int:
    """64 booleans (row-major, first = most significant) -> signed int64 with that bit pattern."""
    return int(np.packbits(bits.astype(bool)).view(">i8")[0])


def to_hex(value: int) -> str:
    """The 16-hex-digit form ImageHash prints (`str(imagehash.dhash(img))`)."""
    return f"{value & 0xFFFFFFFFFFFFFFFF:016x}"


def canonical(img: Image.Image) -> Image.Image:
    """One mode per picture: "L" for grey content, "RGB" for colour, 16-bit/float kept as "I"/"F".

    A grey picture stored as RGB PNG and the same picture stored as 8-bit grey PNG decode to the
    same "L" pixels; alpha is dropped when fully opaque (otherwise composited on black), palettes
    expanded, CMYK/YCbCr converted. EXIF orientation is ignored on purpose: benchmark loaders
    (VLMEvalKit) do not apply it either, and the bytes are what gets compared.
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return img.convert("I")
    if mode == "F":
        return img
    if mode == "1":
        return img.convert("L")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "RGBa"):
        rgba = np.asarray(img.convert("RGBA"))
        alpha = rgba[..., 3]
        if alpha.min() == 255:
            rgb = rgba[..., :3]
        else:
            a = alpha[..., None].astype(np.uint16)
            rgb = ((rgba[..., :3].astype(np.uint16) * a + 127) // 255).astype(np.uint8)
        img = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
        mode = "RGB"
    if mode not in ("L", "RGB"):
        img = img.convert("RGB")
        mode = "RGB"
    if mode == "RGB":
        arr = np.asarray(img)
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
            return Image.fromarray(np.ascontiguousarray(arr[..., 0]), "L")
    return img


def decode(data: bytes) -> Image.Image:
    """Decode image bytes fully (first frame), raising ImageDecodeError with the reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError...)
        raise ImageDecodeError(f"{type(exc).__name__}: {exc}") from exc
    return img


def pixel_md5(img: Image.Image) -> str:
    """MD5 over mode, size and raw pixels of the canonical image (mode and size keep 'L' 4x1 != 'L' 2x2)."""
    h = hashlib.md5(usedforsecurity=False)
    h.update(f"{img.mode}:{img.width}x{img.height}:".encode())
    if img.mode in ("I", "F"):
        h.update(np.ascontiguousarray(np.asarray(img), dtype="<i4" if img.mode == "I" else "<f4").tobytes())
    else:
        h.update(img.tobytes())
    return h.hexdigest()


def _grey(img: Image.Image) -> Image.Image:
    """8-bit grey for the perceptual hashes; 16-bit/float images are min-max scaled first."""
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray(((arr - lo) * scale).round().astype(np.uint8), "L")
    return img.convert("L")


def _thumb(grey: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(grey.resize(size, _RESAMPLE, reducing_gap=_REDUCING_GAP), dtype=np.float64)


def dhash(grey: Image.Image) -> int:
    """ImageHash's dHash: is each pixel of a 9x8 thumbnail brighter than its left neighbour."""
    t = _thumb(grey, (9, 8))
    return to_int64(t[:, 1:] > t[:, :-1])


def _phash_of_thumb(t: np.ndarray) -> int:
    import scipy.fft  # first use only: keeps Dagster code loads fast

    low = scipy.fft.dct(scipy.fft.dct(t, axis=0), axis=1)[:8, :8]
    return to_int64(low > np.median(low))


def phash(grey: Image.Image) -> int:
    """ImageHash's pHash: 32x32 thumbnail, 2D DCT-II, top-left 8x8 compared with its median."""
    return _phash_of_thumb(_thumb(grey, (32, 32)))


def hash_image(data: bytes) -> ImageHashes:
    """All fingerprints of one encoded image. Raises ImageDecodeError for undecodable bytes."""
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    img = canonical(decode(data))
    grey = _grey(img)
    t32 = _thumb(grey, (32, 32))
    flat = float(t32.max() - t32.min()) < FLAT_RANGE
    return ImageHashes(
        md5=md5,
        pixel_md5=pixel_md5(img),
        dhash=None if flat else dhash(grey),
        phash=None if flat else _phash_of_thumb(t32),
        width=img.width,
        height=img.height,
    )


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & 0xFFFFFFFFFFFFFFFF).bit_count()
