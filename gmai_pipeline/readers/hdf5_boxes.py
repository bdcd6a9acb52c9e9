"""`convert: {kind: hdf5, boxes: {...}}`: detection boxes of HDF5 records from a table beside the files.

fastMRI+ (microsoft/fastmri-plus:Annotations/knee.csv) gives one row per box: `file` (the stem of the
fastMRI volume `file1000001.h5`), `slice` (the index into its `reconstruction_rss`, slices x 320 x
320), `x, y, width, height` in pixels and the finding's `label`; study-level rows (`study_level: Yes`)
carry no box and are declared `skip`. The boxes were drawn on up/down-flipped reconstructions
(microsoft/fastmri-plus:README.md; ExampleScripts/example.ipynb flips with `[:, ::-1, :]`), which
`convert.flip: ud` applies to every slice before it is stored, so the table's pixels match.

What one input is: one box row of a slice (a kept row or its quarantine reason), or a slice that no
row names (`no_finding`: the radiologists marked nothing there). Rows that name no file or slice of
the dataset are counted (`box_rows_unmatched`), skipped rows too (`box_rows_skipped`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from gmai_pipeline.converters.hdf5 import Hdf5BoxTable
from gmai_pipeline.imaging import ImageError
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.readers.base import Annotation, Event, Quarantined, ReaderContext, _finish
from gmai_pipeline.readers.tables import TableError, read_table


@dataclass
class BoxRows:
    """The table's box rows by (file stem, record index); `used` the keys a record claimed."""

    rel: str
    rows: dict[tuple[str, int], list[tuple[int, dict]]]
    used: set[tuple[str, int]] = field(default_factory=set)


def load(ctx: ReaderContext, spec: Hdf5BoxTable) -> tuple[BoxRows | None, list[Event]]:
    """The box table, or None with the event that says why it cannot be used (an input itself)."""
    rel = ctx.at(spec.file)
    if rel not in ctx.files:
        return None, [
            Quarantined(rel, "read", Reason.MISSING_FILE, f"{rel}: box table not found in the dataset folder")
        ]
    ctx.claim(rel)
    wanted = (spec.key, spec.index, *spec.columns, spec.label, *spec.skip)
    try:
        table = read_table(ctx.read(rel), rel, wanted)
    except (TableError, ImageError) as err:
        return None, [Quarantined(rel, "read", err.reason, err.detail)]
    out: dict[tuple[str, int], list[tuple[int, dict]]] = defaultdict(list)
    for line, row in table.rows:
        if spec.skip and all((row.get(k) or "").strip() == v for k, v in spec.skip.items()):
            ctx.counters["box_rows_skipped"] += 1
            continue
        try:
            index = int((row.get(spec.index) or "").strip())
        except ValueError:
            ctx.counters["box_rows_unmatched"] += 1
            continue
        out[((row.get(spec.key) or "").strip(), index)].append((line, row))
    return BoxRows(rel, dict(out)), []


def unmatched(ctx: ReaderContext, boxes: BoxRows) -> None:
    """Count the rows no record claimed (a file not in the download, a slice past its end)."""
    ctx.counters["box_rows_unmatched"] += sum(len(v) for k, v in boxes.rows.items() if k not in boxes.used)


def record_events(
    ctx: ReaderContext,
    spec: Hdf5BoxTable,
    boxes: BoxRows,
    key: tuple[str, int],
    name: str,
    split: str,
    modality: str,
    store,
) -> list[Event]:
    """The events of one record: a row per box, its quarantine reason, or `no_finding` without rows."""
    rows = boxes.rows.get(key)
    if not rows:
        return [Quarantined(name, "annotate", Reason.NO_FINDING, f"{name}: no box row in {boxes.rel}")]
    boxes.used.add(key)
    events: list[Event] = []
    pending = []
    for line, r in rows:
        where = f"{boxes.rel} line {line}"
        raw = (r.get(spec.label) or "").strip()
        label, reason = ctx.label([raw])
        if label is None:
            detail = f"{name}: label '{raw or '(none)'}' in {where} is not in the catalog's labels"
            events.append(Quarantined(name, "annotate", reason or Reason.UNKNOWN_LABEL, detail))
            continue
        try:
            a, b, c, d = (float((r.get(col) or "").strip()) for col in spec.columns)
        except ValueError:
            events.append(
                Quarantined(name, "annotate", Reason.MISSING_BOX, f"{name}: no box numbers in {where}")
            )
            continue
        box = (a, b, a + c, b + d) if spec.format == "xywh" else (a, b, c, d)
        pending.append((Annotation((raw,), box, where=where), label))
    if pending:
        try:
            stored = store()
        except ImageError as err:
            stored = err
        events += _finish(ctx, name, split, pending, modality, stored)
    return events
