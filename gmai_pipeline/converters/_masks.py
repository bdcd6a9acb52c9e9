"""Mask helpers the converters share: label dtypes, one box per instance, option-model base."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import ndimage

Box = tuple[int, int, int, int]  # [x0, y0, x1, y1], half-open, pixels (gmai_pipeline.imaging convention)


class Options(BaseModel):
    """Converter options: closed and immutable, like every catalog model, so a typo fails at load time."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def label_dtype(top: int) -> np.dtype:
    """The smallest unsigned type holding 0..top (the same rule as `volumes.as_label_array`)."""
    return np.dtype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)


def instance_boxes(
    instances: np.ndarray, count: int, min_pixels: int = 1
) -> tuple[list[tuple[int, Box]], int]:
    """(instance id, box) for instances 1..count that kept at least `min_pixels` pixels, and how many did not.

    One box per instance, not per connected component: a nucleus drawn as one polygon stays one
    object even when a later polygon splits it in two.
    """
    if count == 0:
        return [], 0
    sizes = np.bincount(instances.ravel(), minlength=count + 1)
    out: list[tuple[int, Box]] = []
    dropped = 0
    for i, sl in enumerate(ndimage.find_objects(instances, max_label=count), start=1):
        if sl is None or sizes[i] < min_pixels:
            dropped += 1
            continue
        rows, cols = sl
        out.append((i, (cols.start, rows.start, cols.stop, rows.stop)))
    return out, dropped


def read_label_image(path, name: str) -> np.ndarray:
    """A 2D label image (PNG/TIFF/BMP) as label indices: palette PNGs give indices, grey images values.

    A colour image whose channels differ is `unsupported_mask`: colours are not label values.
    """
    from PIL import Image

    from gmai_pipeline.imaging import ImageError, classify_error

    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except Exception as exc:
        err = classify_error(exc, name)
        raise ImageError(err.reason, err.detail) from None
    if arr.ndim == 3:
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(3, arr.shape[2]))):
            raise ImageError(
                "unsupported_mask", f"{name}: colour mask (channels differ); expected label indices"
            )
        arr = arr[..., 0]
    return arr.astype(np.uint8) if arr.dtype == bool else arr
