"""Partitioned normalization: a dataset's cases split over `partitions:` steps, then joined.

A dataset whose normalization takes hours on one core (a thousand CT volumes, a 200k-image X-ray
set) declares `partitions: N` in its catalog entry (`catalog.partitionable` says which readers can).
Case `c` (a 3D case, a 2D image) belongs to part `partitions.case_partition(c, N)`, a stable hash of
its id, so a rerun puts every case where it was. Each part runs the reader over the whole layout
(names, claims, splits and byte duplicates cost no decoding) but decodes only its own cases
(`normalize_source(part=...)`, `ReaderContext.owns`), writing `normalized/<name>/part-NNN.parquet`, its
quarantine part and a report of what it counted (`part-NNN.json`), each atomically; the parts run as
separate steps, so the executor's workers (processes, Celery workers, Kubernetes pods) share them.

`join_parts` then streams the parts into the dataset's `normalized/<name>.parquet` and
`quarantine/<name>.parquet`, the tables every consumer reads, and sums the reports: the joined
tables hold the same rows, images and quarantine as one unpartitioned run (in part order), so the
checks (inputs = kept + quarantined included) judge the union. Every part records a fingerprint of
the manifest and the catalog entry it was made from; a part made from an older one is refused by
name, so a dataset is never joined from parts of two different states. The whole manifest counts, not
only the part's cases: which copy of a byte duplicate is kept depends on every file before it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.normalize import PREVIEW_IMAGES, NormalizeReport, PreviewItem
from gmai_pipeline.schemas import NORMALIZED_SCHEMA, QUARANTINE_SCHEMA
from gmai_pipeline.storage import OutputLayout, atomic_path, atomic_write_text

COUNTERS = ("by_reason", "labels", "counters", "case_counters")
SAME_IN_EVERY_PART = (  # worked out from the whole layout by every part: taken from the first
    "folder",
    "layout_root",
    "expected_layout",
    "url",
    "files",
    "archives_left",
    "ignored",
    "images",
    "cases",
)


class PartsNotReady(Exception):
    """A part is missing, failed, or was made from another manifest or catalog entry; the message says which."""


def part_name(part: int) -> str:
    """The key of a part, as its asset key's last component: p000, p001, ..."""
    return f"p{part:03d}"


def fingerprint(source: SourceDataset, manifest_rows: list[dict]) -> str:
    """What a part's output depends on besides the code: the catalog entry and the manifest (paths, MD5s)."""
    h = hashlib.sha256(source.model_dump_json().encode())
    for row in sorted(manifest_rows, key=lambda r: r["path"]):
        h.update(f"\0{row['path']}\0{row.get('md5')}\0{row.get('refused')}".encode())
    return h.hexdigest()[:32]


def write_part_report(
    layout: OutputLayout, source: SourceDataset, part: int, report: NormalizeReport, made_from: str
) -> Path:
    """Record what a finished part counted (after its tables were written, so the record means they are)."""
    data = {f.name: getattr(report, f.name) for f in fields(report)}  # asdict() would mangle the Counters
    data.update({name: dict(getattr(report, name)) for name in COUNTERS})
    data["preview"] = [{"image": p.image, "boxes": p.boxes} for p in report.preview]
    return _write(
        layout, source, part, {"part": part, "parts": source.partitions, "made_from": made_from, **data}
    )


def write_part_failure(
    layout: OutputLayout, source: SourceDataset, part: int, problem: str, made_from: str | None
) -> Path:
    """Record why a part could not be made (its reader raised, the manifest is missing); the join names it."""
    return _write(
        layout,
        source,
        part,
        {"part": part, "parts": source.partitions, "made_from": made_from, "error": problem},
    )


def _write(layout: OutputLayout, source: SourceDataset, part: int, data: dict) -> Path:
    path = layout.part_report(source.name, part)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def read_part_report(
    layout: OutputLayout, source: SourceDataset, part: int, made_from: str
) -> NormalizeReport:
    """The report of one finished part made from the current manifest and entry; PartsNotReady otherwise."""
    key = f"normalized/{source.name}/{part_name(part)}"
    path = layout.part_report(source.name, part)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PartsNotReady(
            f"{source.name}: part {key} has not been made ({path} is missing): materialize it"
        ) from None
    except (OSError, ValueError) as exc:
        raise PartsNotReady(
            f"{source.name}: {path} cannot be read ({exc}): materialize {key} again"
        ) from None
    if data.get("error"):
        raise PartsNotReady(f"{source.name}: part {key} failed: {data['error']}")
    if data.get("made_from") != made_from or data.get("parts") != source.partitions:
        raise PartsNotReady(
            f"{source.name}: part {key} was made from an earlier manifest or catalog entry: materialize it "
            f"again (or all of normalized/{source.name})"
        )
    for table in (layout.normalized_part(source.name, part), layout.quarantine_part(source.name, part)):
        if not table.is_file():
            raise PartsNotReady(f"{source.name}: {table} of part {key} is missing: materialize {key} again")
    report = NormalizeReport(**{k: v for k, v in data.items() if k in NormalizeReport.__dataclass_fields__})
    for name in COUNTERS:
        setattr(report, name, Counter(getattr(report, name)))
    report.preview = [PreviewItem(p["image"], [(b[0], b[1]) for b in p["boxes"]]) for p in data["preview"]]
    return report


def join_parts(layout: OutputLayout, source: SourceDataset, made_from: str) -> NormalizeReport:
    """Stream every part into the dataset's two tables (atomically) and return the parts' summed report.

    Every part must be finished and made from `made_from` (`fingerprint` of the current manifest and
    entry); PartsNotReady names the first that is not, and nothing is written.
    """
    reports = [read_part_report(layout, source, i, made_from) for i in range(source.partitions)]
    for target, part_path, schema in (
        (layout.normalized(source.name), layout.normalized_part, NORMALIZED_SCHEMA),
        (layout.quarantine(source.name), layout.quarantine_part, QUARANTINE_SCHEMA),
    ):
        with atomic_path(target) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for i in range(source.partitions):
                for batch in pq.ParquetFile(part_path(source.name, i)).iter_batches(batch_size=65536):
                    writer.write_table(pa.Table.from_batches([batch]).cast(schema))
    _remove_dropped_parts(layout, source)
    return _summed(source, reports)


def _summed(source: SourceDataset, reports: list[NormalizeReport]) -> NormalizeReport:
    first = reports[0]
    joined = NormalizeReport(source.name, **{k: getattr(first, k) for k in SAME_IN_EVERY_PART})
    for r in reports:
        joined.inputs += r.inputs
        joined.kept += r.kept
        joined.quarantined += r.quarantined
        joined.rows += r.rows
        joined.seconds += r.seconds  # the work of every part (the steps run side by side)
        joined.by_reason.update(r.by_reason)
        joined.labels.update(r.labels)
        joined.counters.update(r.case_counters)
    joined.counters.update(first.counters - first.case_counters)  # the walk's counts, the same in every part
    items = [item for r in reports for item in r.preview]
    joined.preview = random.Random(source.name).sample(items, min(PREVIEW_IMAGES, len(items)))
    return joined


def _remove_dropped_parts(layout: OutputLayout, source: SourceDataset) -> None:
    """Parts beyond `partitions` (left when an entry lowered it) are not part of the dataset any more."""
    for folder in (
        layout.normalized_part(source.name, 0).parent,
        layout.quarantine_part(source.name, 0).parent,
    ):
        for path in folder.glob("part-*"):
            stem = path.name.split(".", 1)[0]
            if stem[5:].isdigit() and int(stem[5:]) >= source.partitions:
                path.unlink(missing_ok=True)
