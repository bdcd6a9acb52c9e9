"""`npy`: stacked NumPy patch arrays (PanNuke) -> one record per index, memory-mapped, never loaded whole.

What an input is: one index `i` of the image array (`images.npy[i]`, with `masks.npy[i]` from the mask
file the declaration names). A file that cannot be used at all (not `.npy`, a pickled object array,
shorter than its header says, images and masks of different lengths or sizes) raises one `ImageError`
for the whole file, which the reader records once, naming the file.

Why it is built this way:
- PanNuke ships per fold `images.npy` (N x 256 x 256 x 3, float64 RGB in 0-255) and `masks.npy`
  (N x 256 x 256 x 6: channels 0-4 hold the instance ids of neoplastic, inflammatory, connective,
  dead and epithelial nuclei, channel 5 is background; constantinpape/torch-em:
  torch_em/data/datasets/histopathology/pannuke.py `_channels_to_semantics` maps channel i to class
  i + 1 and skips the last). A fold is several GB of float64, so the arrays are memory-mapped from
  the verified descriptor (`np.memmap` on its file number) and one record is copied at a time.
- `allow_pickle` is never on: the header is parsed with `numpy.lib.format` and an object dtype is
  refused (`unsupported_layout`); the size the header implies is checked against the file (`truncated`)
  and one record's decoded size against the decode budget before anything is mapped.
- Pixels: uint8 as they are; `value_range` maps a declared range linearly onto 0-255 (PanNuke's floats
  are already 0-255: scaling them per image would change their colours); otherwise per image
  (`imaging.to_uint8`).
- Boxes: one per instance id per class channel (`instance_channels`: channel -> class value), not per
  connected component, so two touching nuclei stay two objects and a nucleus cut in two stays one.

Catalog declaration (`reader.convert` of a `kind: layout` entry; the reader is `gmai_pipeline.readers.npy`):

    images: "{part}/images/{fold}/images.npy"
    convert: {kind: npy, masks_file: "{part}/masks/{fold}/masks.npy",
              instance_channels: {0: 1, 1: 2, 2: 3, 3: 4, 4: 5}, value_range: [0, 255]}
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from gmai_pipeline.converters._masks import Box, Options, instance_boxes
from gmai_pipeline.imaging import ImageError, to_uint8
from gmai_pipeline.quarantine import Reason


class NpyOptions(Options):
    kind: Literal["npy"] = "npy"
    masks_file: str  # path template of the mask array, filled in with the image file's fields
    instance_channels: dict[int, int] = Field(min_length=1)  # mask channel -> class value (its instance ids)
    value_range: tuple[float, float] | None = None  # image values mapped linearly onto 0-255

    @field_validator("masks_file")
    @classmethod
    def _template(cls, v: str) -> str:
        from gmai_pipeline.layouts import check_template  # the schema module imports this one

        check_template(v)
        return v

    @field_validator("value_range")
    @classmethod
    def _range(cls, v):
        if v is not None and not v[0] < v[1]:
            raise ValueError("value_range: [low, high] with low < high")
        return v


@dataclass
class NpyArray:
    """A memory-mapped `.npy` array (header checked, data not read)."""

    data: np.memmap
    name: str

    @property
    def count(self) -> int:
        return int(self.data.shape[0])


def open_array(f, name: str) -> NpyArray:
    """Map the array of an open binary file (the reader's verified descriptor); ImageError when unusable."""
    from numpy.lib import format as npf

    f.seek(0)
    try:
        version = npf.read_magic(f)
        reader = {(1, 0): npf.read_array_header_1_0, (2, 0): npf.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(version)
        shape, fortran, dtype = reader(f)
    except ValueError:
        raise ImageError(Reason.UNREADABLE, f"{name}: not a NumPy .npy array file") from None
    if dtype.hasobject:
        raise ImageError(
            Reason.UNSUPPORTED_LAYOUT, f"{name}: an object array (pickled Python objects); never unpickled"
        )
    if not shape:
        raise ImageError(Reason.UNSUPPORTED_LAYOUT, f"{name}: a scalar, not an array of records")
    offset = f.tell()
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = os.fstat(f.fileno()).st_size
    if size < need:
        raise ImageError(Reason.TRUNCATED, f"{name}: {size} bytes, its header says {need}")
    order = "F" if fortran else "C"
    return NpyArray(np.memmap(f, dtype=dtype, mode="r", shape=shape, order=order, offset=offset), name)


def check(images: NpyArray, masks: NpyArray, opts: NpyOptions) -> None:
    """Shapes that fit the declaration, before any record is read."""
    x, y = images.data, masks.data
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3, 4)) or x.dtype.kind not in "uif":
        raise ImageError(
            Reason.UNSUPPORTED_LAYOUT,
            f"{images.name}: array is {x.shape} {x.dtype}; expected (N, H, W) or (N, H, W, 1|3|4) numbers",
        )
    if y.ndim != 4 or y.dtype.kind not in "uif" or y.shape[:3] != x.shape[:3]:
        raise ImageError(
            Reason.SHAPE_MISMATCH,
            f"{masks.name}: array is {y.shape} {y.dtype}; expected (N, H, W, channels) with N, H, W of "
            f"{images.name} {x.shape[:3]}",
        )
    missing = sorted(c for c in opts.instance_channels if c >= y.shape[3])
    if missing:
        raise ImageError(Reason.SHAPE_MISMATCH, f"{masks.name}: no channel {missing} (it has {y.shape[3]})")


def record_bytes(images: NpyArray, masks: NpyArray) -> int:
    """One record's copy: the image and its masks, plus a float copy of the image for scaling."""
    per = int(np.prod(images.data.shape[1:], dtype=np.int64))
    return (
        per * (images.data.dtype.itemsize + 8)
        + int(np.prod(masks.data.shape[1:])) * masks.data.dtype.itemsize
    )


def image(arr: np.ndarray, opts: NpyOptions) -> np.ndarray:
    """One record's pixels as uint8 (H, W) or (H, W, C)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint8:
        return np.array(arr)
    if opts.value_range is not None:
        lo, hi = opts.value_range
        a = np.asarray(arr, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ImageError(Reason.NON_FINITE, "pixels have NaN or infinite values")
        return np.rint(np.clip((a - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)
    return to_uint8(np.asarray(arr))


def boxes(masks: np.ndarray, opts: NpyOptions, min_pixels: int) -> tuple[list[tuple[int, Box]], int]:
    """(class value, box) per instance id of each declared channel, and how many fell under `min_pixels`."""
    out: list[tuple[int, Box]] = []
    dropped = 0
    for channel, value in sorted(opts.instance_channels.items()):
        plane = np.asarray(masks[..., channel])
        if plane.dtype.kind == "f" and not (
            np.isfinite(plane).all() and np.array_equal(plane, np.rint(plane))
        ):
            raise ImageError(Reason.UNSUPPORTED_MASK, f"channel {channel} holds non-integer instance ids")
        if plane.size and plane.min() < 0:
            raise ImageError(Reason.UNSUPPORTED_MASK, f"channel {channel} holds negative instance ids")
        ids, inverse = np.unique(plane.astype(np.int64), return_inverse=True)
        if ids.size and ids[0] == 0:
            inverse = inverse.reshape(plane.shape)
            count = ids.size - 1
        else:  # no background pixel: every id is an instance, numbered from 1
            inverse = inverse.reshape(plane.shape) + 1
            count = ids.size
        found, lost = instance_boxes(inverse.astype(np.int32), count, min_pixels)
        out += [(value, b) for _, b in found]
        dropped += lost
    return out, dropped


def iter_records(
    images: NpyArray, masks: NpyArray, opts: NpyOptions
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(index, image record, mask record), each a copy of one record of the mapped arrays."""
    for i in range(images.count):
        yield i, np.array(images.data[i]), np.array(masks.data[i])
