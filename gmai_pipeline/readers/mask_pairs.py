"""`mask_pairs`: 2D image + label mask, `images/x.png` with `masks/x<mask_suffix><mask_extension>`.

Input = each image file under `images_dir` (when masks live in the same folder, files ending in
`<mask_suffix><mask_extension>` are masks, not inputs). A kept input gives one row per kept
connected component of each label value (same mask-to-box code as the 3D path,
`gmai_pipeline.volumes.mask_boxes`). Quarantined: no mask file (`missing_file`), mask size !=
image size (`shape_mismatch`), no component left after the area filters (`empty_mask`), a mask
value the label map does not know (`unknown_label`; the raw label is the value as text, e.g. "1"
or "255"), a colour mask whose channels differ (`unsupported_mask`). Masks are read as label
indices: palette PNGs give their indices, grey PNGs their values.
A mask without an image is not an input; it is listed among the ignored files (asset metadata).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

from gmai_pipeline.catalog import IMAGE_EXTENSIONS, MaskPairsReader
from gmai_pipeline.decode_guard import DecodeBudget
from gmai_pipeline.imaging import ImageError, classify_error, declared_bytes
from gmai_pipeline.readers.base import Event, Kept, Quarantined, ReaderContext, at_boundary
from gmai_pipeline.volumes import mask_boxes


def load_mask(data: bytes, rel: str, budget: DecodeBudget | None = None) -> np.ndarray:
    """Label indices of an encoded mask; its declared size is checked against `budget` before decoding."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if budget is not None:
                budget.check(declared_bytes(im), rel, f"a {im.width}x{im.height} {im.mode} mask")
            im.load()
            arr = np.asarray(im)
    except ImageError:
        raise
    except Exception as exc:
        err = classify_error(exc, rel)
        raise ImageError(err.reason, err.detail.replace(f"{rel}: ", f"{rel}: mask: ", 1)) from None
    if arr.ndim == 3:
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(3, arr.shape[2]))):
            raise ImageError(
                "unsupported_mask", f"{rel}: colour mask (channels differ); expected label indices"
            )
        arr = arr[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def read(ctx: ReaderContext, opts: MaskPairsReader) -> Iterator[Event]:
    images_dir, masks_dir = opts.images_dir.strip("/"), opts.masks_dir.strip("/")
    mask_tail = f"{opts.mask_suffix}{opts.mask_extension}".lower()
    for rel in ctx.under(images_dir, IMAGE_EXTENSIONS):
        if masks_dir == images_dir and opts.mask_suffix and rel.lower().endswith(mask_tail):
            continue
        inner = PurePosixPath(rel[len(images_dir) + 1 :] if images_dir else rel)
        mask_rel = str(
            PurePosixPath(masks_dir) / inner.with_name(inner.stem + opts.mask_suffix + opts.mask_extension)
        )
        ctx.claim(rel)
        yield at_boundary(rel, lambda rel=rel, mask_rel=mask_rel: _pair(ctx, opts, rel, mask_rel), "image")


def _pair(ctx: ReaderContext, opts: MaskPairsReader, rel: str, mask_rel: str) -> Event:
    if mask_rel not in ctx.files:
        return Quarantined(rel, "read", "missing_file", f"{rel}: mask {mask_rel} not found")
    ctx.claim(mask_rel)
    split = ctx.split_of(rel)
    excluded = ctx.exclusion(rel, split)
    if excluded is not None:
        return Quarantined(rel, *excluded)
    try:
        mask = load_mask(ctx.read(mask_rel), mask_rel, ctx.store.budget)
        data = ctx.read(rel)
        im = Image.open(io.BytesIO(data))  # lazy: the size without decoding; reused by the store
        size = im.size
    except ImageError as err:
        return Quarantined(rel, "read", err.reason, err.detail)
    except Exception as exc:
        err = classify_error(exc, rel)
        return Quarantined(rel, "read", err.reason, err.detail)
    if (mask.shape[1], mask.shape[0]) != size:
        return Quarantined(
            rel,
            "read",
            "shape_mismatch",
            f"{rel}: image is {size[0]}x{size[1]} but mask {mask_rel} is {mask.shape[1]}x{mask.shape[0]}",
        )
    boxes = mask_boxes(mask, opts.min_mask_fraction, opts.min_component_pixels)
    return mask_rows(
        ctx, rel, mask_rel, split, boxes, lambda: ctx.store.store_bytes(data, rel, im, ctx.files.get(rel))
    )


def value_label(ctx: ReaderContext, value: int, names: dict[int, str] | None = None) -> str | None:
    """A mask value's label: catalog map (by value, then by name) if given; else the dataset's own
    names (dataset.json), where a value it does not name is unknown; else the value as text."""
    name = (names or {}).get(value)
    if ctx.source.labels:
        return ctx.label([str(value)] + ([name] if name else []))[0]
    if names:
        return name
    return str(value)


def mask_rows(
    ctx: ReaderContext, rel: str, mask_rel: str, split: str, boxes, store, value_names=None, **row_kw
) -> Event:
    """Boxes of one image (or slice) -> Kept rows, or the quarantine reason (empty_mask, unknown_label)."""
    if not boxes:
        return Quarantined(
            rel,
            "annotate",
            "empty_mask",
            f"{rel}: mask {mask_rel} has no foreground component above the size limits",
        )
    labels: dict[int, str] = {}
    unknown = []
    for value in sorted({v for v, _ in boxes}):
        label = value_label(ctx, value, value_names)
        if label is None:
            unknown.append(value)
        else:
            labels[value] = label
    if unknown:
        return Quarantined(
            rel,
            "annotate",
            "unknown_label",
            f"{rel}: mask values {unknown} in {mask_rel} are not in the label map",
        )
    try:
        stored = store()
    except ImageError as err:
        return Quarantined(rel, "read", err.reason, err.detail)
    return Kept([ctx.row(rel, split, stored, labels[v], stored.scale_box(b), **row_kw) for v, b in boxes])
