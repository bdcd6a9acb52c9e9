"""`convert: {kind: hdf5}`: images and labels stored as HDF5 arrays (PCam) -> one 2D row per index.

What one input is: one index of the image dataset (`x[i]`, with `y[i]` from the label dataset, in the
same file or in `labels_file`), named `<file>.h5/<index>` (the `source_path` and `sample_id` of its
row, the stored image's name); and a whole file when it cannot be used at all (not HDF5, still
gzip-packed, a dataset missing, images and labels of different lengths, its label file missing) or
a declared split leaves it out: one input standing for indices that are never read. A read that
fails part-way (a corrupt chunk) quarantines that index and every later one, each by name, so the
count still holds. `2d_cls`: the label value goes through the catalog's labels (PCam
`{"0": normal, "1": metastatic tissue}`); `2d_seg` (`label_kind: mask`): one row per component;
`2d_det` with `convert.boxes`: one row per box row of a table (`readers.hdf5_boxes`, fastMRI+).

Both files are opened through the verified reads (`ReaderContext.open`: hashed in one streaming pass,
links refused) and h5py reads that descriptor, never the path; records come block by block
(`converters.hdf5.iter_records`), so memory is one block, not the file.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np

from gmai_pipeline.converters._masks import instance_boxes
from gmai_pipeline.converters.hdf5 import Hdf5Record, inspect, instance_ids, iter_records, record_name
from gmai_pipeline.decode_guard import decoder_failure, is_output_failure
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.layouts import Hdf5Convert, LayoutReader
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers import hdf5_boxes
from gmai_pipeline.readers.base import Event, Kept, Quarantined, ReaderContext, at_boundary, boundary_events
from gmai_pipeline.readers.bins import bin_of
from gmai_pipeline.readers.converted import Decided, fill, gather, whole_files
from gmai_pipeline.readers.masks import mask_rows
from gmai_pipeline.readers.values import resolve
from gmai_pipeline.volumes import mask_boxes


def read(ctx: ReaderContext, opts: LayoutReader) -> Iterator[Event]:
    conv: Hdf5Convert = opts.convert  # type: ignore[assignment]
    inputs = gather(ctx, opts)
    yield from inputs.events
    label_of: dict[str, str | None] = {}
    if conv.labels_file is not None:
        for f in inputs.found:
            filled = fill(conv.labels_file, f.fields)
            label_of[f.rel] = ctx.at(filled) if filled is not None else None
    boxes, events = hdf5_boxes.load(ctx, conv.boxes) if conv.boxes is not None else (None, [])
    yield from events
    for item in whole_files(ctx, opts, inputs, label_of):
        if isinstance(item, Quarantined):
            yield item
            continue
        unit, labels_rel = item
        f = unit.found
        if conv.labels_file is not None and (labels_rel is None or labels_rel not in ctx.files):
            ctx.saw_image(f.rel)
            want = labels_rel or conv.labels_file
            yield Quarantined(
                f.rel,
                "read",
                Reason.MISSING_FILE,
                f"{f.rel}: its label file {want} is not in the dataset folder",
            )
            continue
        if events:  # the box table cannot be read: the file is not read either
            ctx.saw_image(f.rel)
            yield Quarantined(f.rel, "read", Reason.MISSING_FILE, f"{f.rel}: its box table cannot be read")
            continue
        yield from _file(ctx, opts, conv, unit, labels_rel, boxes)
    if boxes is not None:
        hdf5_boxes.unmatched(ctx, boxes)


def _file(
    ctx: ReaderContext, opts, conv: Hdf5Convert, unit: Decided, labels_rel: str | None, boxes=None
) -> Iterator[Event]:
    rel = unit.found.rel
    done = 0
    count = None
    with contextlib.ExitStack() as stack:
        try:
            images = stack.enter_context(ctx.open(rel))
            labels = stack.enter_context(ctx.open(labels_rel)) if labels_rel else None
            info = inspect(images, rel, conv, labels, labels_rel or "")
            row_bytes = math.prod(info.image_shape) * np.dtype(info.image_dtype).itemsize
            ctx.store.budget.check(  # a block, plus one record's float copy when it is not uint8
                info.block_rows * row_bytes + 8 * math.prod(info.image_shape),
                rel,
                f"a block of {info.block_rows} records of {info.image_shape} {info.image_dtype}",
            )
            count = info.count
            for rec in iter_records(images, rel, conv, labels, labels_rel or ""):
                if isinstance(rec, tuple):
                    index, err = rec
                    name = record_name(rel, index, count)
                    ctx.saw_image(name)
                    yield Quarantined(name, "annotate", err.reason, err.detail)
                else:
                    name = record_name(rel, rec.index, count)
                    ctx.saw_image(name)
                    if boxes is not None:  # a box table (fastMRI+): events per box row
                        yield from _boxed(ctx, conv, unit, boxes, rec, name)
                    else:
                        yield at_boundary(
                            name,
                            lambda rec=rec, name=name: _record(ctx, opts, conv, unit, rec, name),
                            "record",
                        )
                done += 1
        except Exception as exc:  # noqa: BLE001 - the sample boundary: a file, or the rest of it
            if is_output_failure(exc):
                raise
            err = exc if isinstance(exc, ImageError) else decoder_failure(exc, rel, "HDF5 file")
            if count is None:  # nothing could be counted: the file is one input
                ctx.saw_image(rel)
                yield Quarantined(rel, "read", err.reason, err.detail)
                return
            for index in range(done, count):  # indices after a failed read: each its own input
                name = record_name(rel, index, count)
                ctx.saw_image(name)
                detail = (
                    f"{name}: not read, the file failed at index {done} ({err.detail.split(': ', 1)[-1]})"
                )
                yield Quarantined(name, "read", err.reason, detail)
    ctx.counters["hdf5_records_read"] += done


def _boxed(ctx: ReaderContext, conv: Hdf5Convert, unit: Decided, boxes, rec: Hdf5Record, name: str):
    """A record's box rows at the sample boundary (one quarantine row per box row it stood for)."""
    stem = unit.found.rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    store = ctx.store_for(unit.modality)
    yield from boundary_events(
        name,
        lambda: hdf5_boxes.record_events(
            ctx,
            conv.boxes,  # type: ignore[arg-type]
            boxes,
            (stem, rec.index),
            name,
            unit.split,
            unit.modality,
            lambda: store.store_array(rec.image, name, f"{name}.png"),
        ),
        max(1, len(boxes.rows.get((stem, rec.index), ()))),
        "record",
    )


def _record(ctx: ReaderContext, opts, conv: Hdf5Convert, unit: Decided, rec: Hdf5Record, name: str) -> Event:
    store = ctx.store_for(unit.modality)
    target = f"{name}.png"
    if conv.label_kind == "scalar":
        if rec.label is not None and opts.label is not None and opts.label.bins:  # LYSTO counts -> classes
            value, why = bin_of(opts.label.bins, str(rec.label))
            if why is not None:
                return Quarantined(name, "annotate", Reason.UNKNOWN_LABEL, f"{name}: {why}")
            raw = [value]
        elif rec.label is not None:
            raw = [str(rec.label)]
        else:  # no label dataset: the declared label (a field of the file, a fixed value)
            raw = [resolve(opts.label, unit.values) or ""] if opts.label is not None else []
        label, reason = ctx.label(raw)
        if label is None:
            shown = "/".join(raw) or "(none)"
            return Quarantined(
                name,
                "annotate",
                reason or Reason.UNKNOWN_LABEL,
                f"{name}: label '{shown}' is not in the catalog's labels",
            )
        stored = store.store_array(rec.image, name, target)
        return Kept([ctx.row(name, unit.split, stored, label, None, modality=unit.modality)])
    if conv.instances:  # every non-zero id one object of class 1 (CREMI neuron ids)
        try:
            ids, count = instance_ids(rec.label)  # type: ignore[arg-type]
        except ImageError as err:
            return Quarantined(name, "annotate", err.reason, f"{name}: {err.detail}")
        boxes = [(1, b) for _, b in instance_boxes(ids, count, opts.min_component_pixels)[0]]
    else:
        boxes = mask_boxes(rec.label, opts.min_mask_fraction, opts.min_component_pixels)  # type: ignore[arg-type]
    return mask_rows(
        ctx,
        name,
        name,
        unit.split,
        boxes,
        lambda: store.store_array(rec.image, name, target),
        modality=unit.modality,
    )
