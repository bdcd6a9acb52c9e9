"""Headerless raw pixels (`images.raw`, `layouts.RawPixels`): JSRT's `.IMG` chest films.

Nothing in such a file says its size or sample type, so the declaration is the header: the file must
hold exactly `offset + width x height x bytes per sample` bytes, and integer samples must fit the
declared `bits` (a value above them almost always means the wrong byte order). Both are checked
before the pixels become an image; the working copy is reserved from the decode budget first.
"""

from __future__ import annotations

import numpy as np

from gmai_pipeline.decode_guard import DecodeBudget, ImageError
from gmai_pipeline.imaging import ImageStore, StoredImage, to_uint8
from gmai_pipeline.layouts import RawPixels


def is_raw(spec: RawPixels | None, rel: str) -> bool:
    return spec is not None and rel.lower().endswith(tuple(e.lower() for e in spec.extensions))


def decode_raw(data: bytes, rel: str, spec: RawPixels, budget: DecodeBudget) -> np.ndarray:
    """The 8-bit picture of one raw file (HxW), or ImageError naming the file and what is wrong."""
    pixels = spec.width * spec.height
    need = spec.offset + pixels * spec.itemsize
    what = f"{spec.width}x{spec.height} {spec.dtype}" + (
        f" after {spec.offset} header bytes" if spec.offset else ""
    )
    if len(data) < need:
        raise ImageError(
            "truncated", f"{rel}: {len(data)} bytes, but the declared raw format ({what}) needs {need}"
        )
    if len(data) > need:
        raise ImageError(
            "unreadable",
            f"{rel}: {len(data)} bytes, more than the declared raw format ({what}) holds ({need})",
        )
    with budget.reserve(pixels * 4, rel, f"a {what} raw image"):  # float32 working copy for the window
        arr = np.frombuffer(data, np.dtype(spec.numpy_dtype), count=pixels, offset=spec.offset)
        arr = arr.reshape(spec.height, spec.width)
        if spec.bits is not None:
            signed = spec.dtype.startswith("int")
            bottom = -(1 << (spec.bits - 1)) if signed else 0
            top = bottom + (1 << spec.bits) - 1
            low, high = int(arr.min()), int(arr.max())
            if low < bottom or high > top:
                raise ImageError(
                    "unreadable",
                    f"{rel}: samples reach {low}..{high}, outside the declared {spec.bits} bits "
                    f"(check byte_order {spec.byte_order} and bits)",
                )
            out = to_uint8(arr, float(bottom), float(top))
        else:
            out = to_uint8(arr)
        return 255 - out if spec.invert else out


def store_raw(ctx, store: ImageStore, rel: str, spec: RawPixels) -> StoredImage:
    """Read (verified), decode and store one raw file as PNG."""
    return store.store_array(decode_raw(ctx.read(rel), rel, spec, store.budget), rel)
