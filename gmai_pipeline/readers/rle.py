"""`convert: {kind: rle}`: run-length encoded masks in a table -> label masks -> boxes (2d_seg).

What one input is: an image file the `images` templates match, with every row of the table whose
`table.join.column` equals its `table.join.field` (SIIM-ACR: `ImageId` = the DICOM file's stem), all
rows merged into one mask (`converters.rle.merge`: later rows win overlaps; `rows_are: instances`
makes each row its own object); an image without rows (`unreferenced_file`); an image whose rows all
say "no mask" (`-1` or empty: `no_finding`, a segmentation row needs a box); and each table key whose
image is not found (`missing_file`, named by table and line: the key may be a DICOM UID). A row's label
is `reader.label` (a fixed value, or a column such as HuBMAP's `organ`), else the mask value 1
through the catalog's labels. The variant (`order`, `start`, `runs`) is stated per dataset, never
guessed: a mask decoded in the wrong order is a plausible wrong mask, not an error.
"""

from __future__ import annotations

from collections.abc import Iterator

from gmai_pipeline.catalog import IMAGE_EXTENSIONS_2D
from gmai_pipeline.converters.rle import RleImage, RleOptions, RleRow, is_empty, merge
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.layouts import LayoutReader
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Event, Quarantined, ReaderContext, is_dicom
from gmai_pipeline.readers.converted import decide, gather
from gmai_pipeline.readers.layout import _tables
from gmai_pipeline.readers.masks import Mask2D, seg_image_with
from gmai_pipeline.readers.values import resolve


def read(ctx: ReaderContext, opts: LayoutReader) -> Iterator[Event]:
    conv: RleOptions = opts.convert  # type: ignore[assignment]
    inputs = gather(ctx, opts, IMAGE_EXTENSIONS_2D, join=False)
    yield from inputs.events
    join = opts.table.join  # type: ignore[union-attr]
    inputs.plan.columns = list(dict.fromkeys([*inputs.plan.columns, conv.column]))
    tables, events = _tables(ctx, inputs.plan)
    yield from events
    groups: dict[str, list[tuple[str, int, dict]]] = {}
    for t in tables:
        for line, row in t.rows:
            groups.setdefault(row[join.column], []).append((t.rel, line, row))  # type: ignore[union-attr]
    dicom = any(is_dicom(f.rel) for f in inputs.found)
    done: set[str] = set()
    for f in inputs.found:
        key = f.fields.get(join.field)  # type: ignore[union-attr]
        rows = groups.get(key) if key is not None else None
        inputs.rows[f.rel] = rows[0][2] if rows else {}
        unit = decide(ctx, opts, inputs, f)
        if key is not None and rows is not None:
            done.add(key)
        if unit is None:
            continue
        ctx.claim(f.rel)
        ctx.saw_image(f.rel)
        if isinstance(unit, Quarantined):
            yield unit
            continue
        shown = ctx.shown(f.rel)
        if not rows:
            tables_named = ", ".join(t.rel for t in tables) or "the table"
            yield Quarantined(
                shown, "read", Reason.UNREFERENCED_FILE, f"{shown}: no row of {tables_named} names this image"
            )
            continue
        rle_rows = [
            RleRow(
                row.get(conv.column),
                (resolve(opts.label, {**row, **f.fields}) or "") if opts.label is not None else "1",
                f"{rel} line {line}",
            )
            for rel, line, row in rows
        ]
        if all(is_empty(r.rle) for r in rle_rows):
            where = (
                rle_rows[0].where
                if len(rle_rows) == 1
                else f"{len(rle_rows)} rows ({rle_rows[0].where}, ...)"
            )
            yield Quarantined(
                shown, "annotate", Reason.NO_FINDING, f"{shown}: {where}: the table says no mask"
            )
            continue
        yield seg_image_with(
            ctx,
            opts,
            f.rel,
            unit.split,
            unit.modality,
            lambda size, name, rle_rows=rle_rows: _mask(ctx, opts, conv, rle_rows, size, name),
        )
    for key, rows in groups.items():
        if key in done:
            continue
        rel, line, _ = rows[0]
        named = "" if dicom else f" '{key}'"  # a DICOM image's key is a header value (a UID): not shown
        yield Quarantined(
            rel,
            "read",
            Reason.MISSING_FILE,
            f"{rel} line {line}: image{named} ({len(rows)} row(s)) matches no file of the images templates",
        )


def _mask(ctx, opts: LayoutReader, conv: RleOptions, rows: list[RleRow], size, name: str) -> Mask2D:
    width, height = size
    ctx.store.budget.check(width * height * 3, name, f"its {width}x{height} run-length mask")
    desc = rows[0].where if len(rows) == 1 else f"{len(rows)} rows ({rows[0].where}, ...)"
    if opts.label is None:  # the mask value is the raw label (1), through the catalog's labels
        image: RleImage = merge(rows, height, width, conv)
        if conv.rows_are == "instances":
            return Mask2D(None, {}, True, desc, [(1, box) for _, box in image.instances])
        return Mask2D(image.labels, {}, True, desc)
    labels = sorted({r.label for r in rows if not is_empty(r.rle)})
    if "" in labels:
        raise ImageError(Reason.MISSING_LABEL, f"{name}: a row of {desc} has no label")
    values = {label: i + 1 for i, label in enumerate(labels)}
    names = {v: label for label, v in values.items()}
    image = merge(rows, height, width, conv, values)
    if conv.rows_are == "instances":
        return Mask2D(None, names, False, desc, [(values[label], box) for label, box in image.instances])
    return Mask2D(image.labels, names, False, desc)
