"""`csv_labels`: a CSV with an image column and a label column.

Input = each data row of the CSV (a multi-label CSV with two rows for one image gives two rows
sharing that image), plus each image file under `image_dir` that no row names (`unreferenced_file`).
Image references may omit the extension (`ISIC_0000000`); the image extensions are tried in turn.
A missing or malformed CSV is one input, quarantined, and every image is then unreferenced.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator

from gmai_pipeline.catalog import IMAGE_EXTENSIONS_2D, CsvLabelsReader
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import (
    Annotation,
    Event,
    Quarantined,
    ReaderContext,
    image_inputs,
    join,
    unreferenced,
)


def read(ctx: ReaderContext, opts: CsvLabelsReader) -> Iterator[Event]:
    image_dir = ctx.at(opts.image_dir)
    yield from read_csv_rows(
        ctx, ctx.at(opts.csv), image_dir, opts.image_column, opts.label_column, opts.split_column
    )
    yield from unreferenced(ctx, image_dir)


def read_csv_rows(
    ctx: ReaderContext,
    csv_rel: str,
    image_dir: str,
    image_column: str,
    label_column: str,
    split_column: str | None,
) -> Iterator[Event]:
    if csv_rel not in ctx.files:
        yield Quarantined(
            csv_rel, "read", Reason.MISSING_FILE, f"{csv_rel}: label CSV not found in the dataset folder"
        )
        return
    ctx.claim(csv_rel)
    try:
        with ctx.text_file(csv_rel) as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            wanted = [c for c in (image_column, label_column, split_column) if c]
            missing = [c for c in wanted if c not in columns]
            if missing:
                yield Quarantined(
                    csv_rel,
                    "read",
                    Reason.UNREADABLE,
                    f"{csv_rel}: column(s) {missing} not in the header {columns}",
                )
                return
            for line, record in enumerate(reader, start=2):
                ref = (record.get(image_column) or "").strip()
                where = f"{csv_rel} line {line}"
                if not ref:
                    yield Quarantined(
                        csv_rel, "read", Reason.MISSING_FILE, f"{where}: empty '{image_column}' cell"
                    )
                    continue
                rel = join(image_dir, ref)
                if rel is not None:
                    rel = ctx.find(rel, IMAGE_EXTENSIONS_2D) or rel
                split = ctx.split_of(rel or ref, record.get(split_column) if split_column else None)
                ann = Annotation((record.get(label_column) or "",), where=where)
                yield from image_inputs(ctx, rel, ref, split, [ann])
    except ImageError as err:  # not UTF-8, or changed or swapped since the scan
        yield Quarantined(csv_rel, "read", err.reason, err.detail)
    except csv.Error as exc:
        yield Quarantined(csv_rel, "read", Reason.UNREADABLE, f"{csv_rel}: not a readable CSV ({exc})")
