"""Mask helpers the converters share: label dtypes, one box per instance, option-model base.

Decoding a 2D label image is `readers.masks.load_mask` (on verified bytes), for converters too."""

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
