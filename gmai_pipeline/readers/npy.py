"""`convert: {kind: npy}`: stacked `.npy` patch arrays with per-class instance channels (PanNuke) -> rows.

What one input is: one index of the image array, named `<file>.npy/<index>` (its rows' `source_path`
and `sample_id`, the stored image's name), with the same index of the mask array `convert.masks_file`
names; and a whole file when it cannot be used at all (not `.npy`, an object array, truncated, its mask
file missing or of another length) or a declared split leaves it out: one input standing for indices
never read. `2d_det` and `2d_seg` rows alike: one box per instance id of each declared channel, its
label the channel's class value through the catalog's labels; an index with no instance is
`empty_mask`.

Both arrays are memory-mapped from the verified descriptors (`ReaderContext.open`: hashed in one
streaming pass, links refused), so memory is one record, not the fold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from gmai_pipeline.converters import npy as conv_npy
from gmai_pipeline.converters.hdf5 import record_name
from gmai_pipeline.decode_guard import decoder_failure, is_output_failure
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.layouts import LayoutReader
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Event, Quarantined, ReaderContext, at_boundary
from gmai_pipeline.readers.converted import Decided, fill, gather, whole_files
from gmai_pipeline.readers.layout import _per_box
from gmai_pipeline.readers.masks import mask_rows


def read(ctx: ReaderContext, opts: LayoutReader) -> Iterator[Event]:
    conv: conv_npy.NpyOptions = opts.convert  # type: ignore[assignment]
    inputs = gather(ctx, opts)
    yield from inputs.events
    masks_of = {
        f.rel: (lambda m: ctx.at(m) if m else None)(fill(conv.masks_file, f.fields)) for f in inputs.found
    }
    for item in whole_files(ctx, opts, inputs, masks_of):
        if isinstance(item, Quarantined):
            yield item
            continue
        unit, masks_rel = item
        f = unit.found
        if masks_rel is None or masks_rel not in ctx.files:
            ctx.saw_image(f.rel)
            want = masks_rel or conv.masks_file
            yield Quarantined(
                f.rel,
                "read",
                Reason.MISSING_FILE,
                f"{f.rel}: its mask array {want} is not in the dataset folder",
            )
            continue
        yield from _file(ctx, opts, conv, unit, masks_rel)


def _file(ctx: ReaderContext, opts, conv, unit: Decided, masks_rel: str) -> Iterator[Event]:
    rel = unit.found.rel
    done = 0
    count = None
    with contextlib.ExitStack() as stack:
        try:
            images = conv_npy.open_array(stack.enter_context(ctx.open(rel)), rel)
            masks = conv_npy.open_array(stack.enter_context(ctx.open(masks_rel)), masks_rel)
            conv_npy.check(images, masks, conv)
            ctx.store.budget.check(
                conv_npy.record_bytes(images, masks),
                rel,
                f"one record of {images.data.shape[1:]} and its masks",
            )
            count = images.count
            for i, img, mask in conv_npy.iter_records(images, masks, conv):
                name = record_name(rel, i, count)
                ctx.saw_image(name)
                yield from _per_box(  # 2d_det: each box is one input, as a detection table's rows are
                    ctx,
                    at_boundary(
                        name,
                        lambda img=img, mask=mask, name=name: _record(ctx, opts, conv, unit, img, mask, name),
                        "record",
                    ),
                )
                done += 1
        except Exception as exc:  # noqa: BLE001 - the sample boundary: a file, or the rest of it
            if is_output_failure(exc):
                raise
            err = exc if isinstance(exc, ImageError) else decoder_failure(exc, rel, "NumPy array file")
            if count is None:  # nothing could be counted: the file is one input
                ctx.saw_image(rel)
                yield Quarantined(rel, "read", err.reason, err.detail)
                return
            for index in range(done, count):  # indices after a failed read: each its own input
                name = record_name(rel, index, count)
                ctx.saw_image(name)
                why = err.detail.split(": ", 1)[-1]
                yield Quarantined(
                    name, "read", err.reason, f"{name}: not read, the file failed at index {done} ({why})"
                )
    ctx.counters["npy_records_read"] += done


def _record(ctx: ReaderContext, opts, conv, unit: Decided, img, mask, name: str) -> Event:
    try:
        pixels = conv_npy.image(img, conv)
        found, _ = conv_npy.boxes(mask, conv, opts.min_component_pixels)
    except ImageError as err:
        return Quarantined(name, "read", err.reason, f"{name}: {err.detail}")
    store = ctx.store_for(unit.modality)
    return mask_rows(
        ctx,
        name,
        name,
        unit.split,
        found,
        lambda: store.store_array(pixels, name, f"{name}.png"),
        modality=unit.modality,
    )
