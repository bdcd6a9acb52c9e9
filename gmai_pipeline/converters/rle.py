"""`rle`: run-length encoded masks in a table (the Kaggle convention and its variants) -> label masks.

What an input is: one image id of the RLE table, with all its rows together (several rows per image
are merged: one per class, or one per instance). A row whose value is empty or `-1` says "no mask";
an image whose rows are all like that is an image without findings (`RleImage.empty`), which the
reader keeps or quarantines (`empty_mask`) as the catalog says. One malformed row quarantines its
image (`invalid_rle`, `rle_outside_image`), with the table line named.

The variants, stated per dataset (`order`, `start`, `runs`), because a mask decoded in the wrong
order is a plausible-looking wrong mask, not an error:
- `order: column` (Kaggle's usual "pixels are numbered from top to bottom, then left to right"):
  SIIM-ACR pneumothorax, HuBMAP kidney, Airbus ships, Severstal steel. `order: row` ("left to right,
  then top to bottom"): UW-Madison GI tract and Sartorius cells as their public decoders read them
  (`img.reshape(shape)` without the transpose).
- `start: 1` (Kaggle: the first pixel is 1) or `0`.
- `runs: absolute` (pairs of start, length) or `relative`: SIIM-ACR's own release, where each start
  counts from the end of the previous run ("pixel locations are measured from the end of the previous
  run", prasadsawant5/kaggle-pneumothorax:README.md, quoting the competition).

Runs are validated with whole-array numpy checks (integers, even count, positive lengths, increasing and
non-overlapping, inside the image) and then filled as slices, as fast as the bare Kaggle loop.

Catalog declaration (`reader.convert` of a `kind: layout` entry; the reader is
`gmai_pipeline.readers.rle`). SIIM-ACR (the table's header ` EncodedPixels` is read trimmed):

    reader:
      kind: layout
      images: "dicom-images-train/*/*/{image_id}.dcm"
      table: {file: train-rle.csv, join: {column: ImageId, field: image_id}}
      label: pneumothorax
      convert: {kind: rle, column: EncodedPixels, order: column, runs: relative, start: 0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from gmai_pipeline.converters._masks import Box, Options, instance_boxes, label_dtype
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason

EMPTY_VALUES = ("", "-1", "nan", "none")


class RleOptions(Options):
    kind: Literal["rle"] = "rle"
    column: str = "EncodedPixels"  # the table column holding the runs
    order: Literal["column", "row"]  # required: the dataset's own numbering, never guessed
    start: Literal[0, 1] = 1
    runs: Literal["absolute", "relative"] = "absolute"
    rows_are: Literal["classes", "instances"] = "classes"  # instances: one object per row (cells, nuclei)


@dataclass(frozen=True)
class RleRow:
    rle: str | None
    label: str  # raw label of the row (class column, or the dataset's single class)
    where: str  # "train.csv line 12", for messages


@dataclass
class RleImage:
    """The merged rows of one image: a label map, and one box per row when rows are instances."""

    labels: np.ndarray  # (height, width), value per label (`values`)
    instances: list[tuple[str, Box]] = field(default_factory=list)
    empty: bool = False  # every row said "no mask"


def is_empty(rle: str | float | None) -> bool:
    if rle is None or (isinstance(rle, float) and math.isnan(rle)):
        return True
    return str(rle).strip().lower() in EMPTY_VALUES


def runs_of(
    rle: str, height: int, width: int, *, start: int = 1, runs: str = "absolute", where: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """(0-based starts, ends) in the flat numbering, validated; ImageError naming `where` otherwise."""
    try:
        nums = np.array(rle.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        raise ImageError(Reason.INVALID_RLE, f"{where}: run-length values are not all integers") from None
    if nums.size % 2:
        raise ImageError(
            Reason.INVALID_RLE, f"{where}: an odd number of values ({nums.size}); runs come in pairs"
        )
    starts, lengths = nums[0::2].copy(), nums[1::2]
    if lengths.size and lengths.min() <= 0:
        raise ImageError(Reason.INVALID_RLE, f"{where}: a run of length {int(lengths.min())}")
    if runs == "relative":
        if starts.size and starts.min() < 0:
            raise ImageError(Reason.INVALID_RLE, f"{where}: a negative relative offset")
        # start_k = sum of offsets and lengths before it, plus its own offset
        ends_before = np.concatenate([[0], np.cumsum(starts[:-1] + lengths[:-1])]) if starts.size else starts
        starts = ends_before + starts
    else:
        starts = starts - start
        if starts.size and starts.min() < 0:
            raise ImageError(Reason.INVALID_RLE, f"{where}: a start below {start}, the first pixel")
    ends = starts + lengths
    if starts.size > 1 and np.any(starts[1:] < ends[:-1]):
        raise ImageError(Reason.INVALID_RLE, f"{where}: runs overlap or are not in increasing order")
    if ends.size and int(ends[-1]) > height * width:
        raise ImageError(
            Reason.RLE_OUTSIDE_IMAGE, f"{where}: runs reach pixel {int(ends[-1])} of a {width}x{height} image"
        )
    return starts, ends


def decode(
    rle: str,
    height: int,
    width: int,
    *,
    order: Literal["column", "row"],
    start: int = 1,
    runs: Literal["absolute", "relative"] = "absolute",
    where: str = "",
) -> np.ndarray:
    """One RLE string -> bool (height, width); an empty/-1 value gives an all-false mask."""
    if is_empty(rle):
        return np.zeros((height, width), dtype=bool)
    starts, ends = runs_of(rle, height, width, start=start, runs=runs, where=where)
    flat = np.zeros(height * width, dtype=bool)
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):  # slice fills: memset speed per run
        flat[a:b] = True
    return flat.reshape(width, height).T if order == "column" else flat.reshape(height, width)


def encode(
    mask: np.ndarray,
    *,
    order: Literal["column", "row"],
    start: int = 1,
    runs: Literal["absolute", "relative"] = "absolute",
) -> str:
    """bool (height, width) -> RLE string in the given variant ('' for an empty mask)."""
    flat = np.concatenate(
        [[False], (mask.T if order == "column" else mask).ravel().astype(bool, copy=False), [False]]
    )
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    starts, ends = edges[0::2], edges[1::2]
    lengths = ends - starts
    if runs == "relative":
        offsets = starts - np.concatenate([[0], ends[:-1]])
        pairs = np.stack([offsets, lengths], axis=1)
    else:
        pairs = np.stack([starts + start, lengths], axis=1)
    return " ".join(map(str, pairs.ravel().tolist()))


def merge(
    rows: Sequence[RleRow],
    height: int,
    width: int,
    opts: RleOptions,
    values: Mapping[str, int] | None = None,
) -> RleImage:
    """All rows of one image -> one label map (later rows win where they overlap).

    `values` maps each row label to its value in the map (the catalog's label order); without it every
    row is value 1. With `rows_are: instances` each non-empty row is also one object with its own box.
    """
    top = max(values.values(), default=1) if values else 1
    labels = np.zeros((height, width), dtype=label_dtype(top))
    instance_map = (
        np.zeros((height, width), dtype=label_dtype(len(rows))) if opts.rows_are == "instances" else None
    )
    instance_labels: list[str] = []
    empty = True
    for row in rows:
        if is_empty(row.rle):
            continue
        empty = False
        mask = decode(
            str(row.rle), height, width, order=opts.order, start=opts.start, runs=opts.runs, where=row.where
        )
        if values is not None and row.label not in values:
            raise ImageError(
                Reason.UNKNOWN_LABEL, f"{row.where}: label '{row.label}' is not in the catalog's labels"
            )
        labels[mask] = values[row.label] if values is not None else 1
        if instance_map is not None:
            instance_labels.append(row.label)
            instance_map[mask] = len(instance_labels)
    out = RleImage(labels, empty=empty)
    if instance_map is not None and instance_labels:
        boxes, _ = instance_boxes(instance_map, len(instance_labels))
        out.instances = [(instance_labels[i - 1], box) for i, box in boxes]
    return out
