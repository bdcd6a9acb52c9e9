"""GENERATED_SCHEMA rows -> the release-records table -> LLaVA/XTuner training records (README, "The release folder").

The release reads the generated records once. `write_release_records` checks every row of every
generated table (conversations that parse and follow the LLaVA turn rules, an image that exists and
that decontamination did not remove, one row per id), sorts the valid ones by id and writes them to
`release_records.parquet` (GENERATED_SCHEMA, sorted by id, in row groups), and every rejected row with
its reason to `release/rejected.parquet` (never dropped). Shards, annotation files, images, mixtures,
the stage III scoring pass and the report all read that table batch by batch (`ReleaseRecords`), so
they see exactly the same records and none of them holds the release in memory.

The sort is an external merge sort: runs of RUN_ROWS rows are sorted in Arrow and spilled as Arrow IPC
streams, then merged a batch per run at a time; memory is bounded by the run size, not the release.
`load_records` runs the same checks and returns the rows as a list (tests and small tools).
"""

from __future__ import annotations

import heapq
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gmai_pipeline.partitions import SHARD_KEYS
from gmai_pipeline.quarantine import Reason
from gmai_pipeline.release.spill import spill_sorted
from gmai_pipeline.schemas import GENERATED_SCHEMA, QUARANTINE_SCHEMA
from gmai_pipeline.storage import OutputLayout, atomic_path, iter_row_groups

GENERATED_KINDS = ("captions", "vqa", "translations")
IMAGE_TOKEN = "<image>"
# Keys of a training record, in the order they are written (the contract, then provenance).
RECORD_KEYS = ("id", "image", "conversations", "width", "height", "dataset", "language", "kind", "generator")


@dataclass(frozen=True)
class ReleaseRow:
    """One training record plus what the release needs beside it (file location, annotation fields)."""

    record: dict[str, Any]
    image_file: str  # absolute path of the stored image (a string: millions of rows, no Path each)
    image_md5: str
    sample_id: str
    modality: str
    department: str
    task_type: str
    clinical_task: str
    confidence: float | None

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def image_path(self) -> Path:
        return Path(self.image_file)


@dataclass
class LoadedRecords:
    rows: list[ReleaseRow]
    rejected: list[dict[str, str]] = field(default_factory=list)  # QUARANTINE_SCHEMA rows
    missing_inputs: list[str] = field(default_factory=list)  # partition files that do not exist
    inputs: int = 0


class ReleaseError(ValueError):
    """The generated tables cannot be released as they are (message says which file or record)."""


def image_relative_to_root(image: str) -> str:
    """`images/2d/cls/...` (relative to the output root) -> `2d/cls/...` (relative to the images root)."""
    return image[len("images/") :] if image.startswith("images/") else image


def check_conversations(conversations: Any) -> Reason | None:
    """None when the turns are valid LLaVA image turns, else the reason code."""
    if not isinstance(conversations, list) or len(conversations) < 2 or len(conversations) % 2:
        return Reason.BAD_TURN_COUNT
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or set(turn) != {"from", "value"} or not isinstance(turn["value"], str):
            return Reason.BAD_TURN_SHAPE
        if turn["from"] != ("human" if i % 2 == 0 else "gpt"):
            return Reason.BAD_ROLE_ORDER
        if not turn["value"].strip():
            return Reason.EMPTY_TURN
    tokens = sum(t["value"].count(IMAGE_TOKEN) for t in conversations)
    if tokens != 1 or not conversations[0]["value"].startswith(IMAGE_TOKEN):
        return Reason.IMAGE_TOKEN
    return None


def to_record(row: dict[str, Any], conversations: list[dict[str, str]]) -> dict[str, Any]:
    record = {
        "id": row["id"],
        "image": image_relative_to_root(row["image"]),
        "conversations": conversations,
        "width": int(row["width"]),
        "height": int(row["height"]),
        "dataset": row["dataset"],
        "language": row["language"],
        "kind": row["kind"],
        "generator": row["generator"],
    }
    if row.get("prompt_version"):
        record["prompt_version"] = row["prompt_version"]
    return record


def input_paths(layout: OutputLayout, partitions: Iterable[str] = SHARD_KEYS) -> list[Path]:
    return [layout.generated(kind, p) for kind in GENERATED_KINDS for p in partitions]


def removed_images(layout: OutputLayout) -> set[str]:
    """Images (relative to the output root) that decontamination removed: benchmark matches and their volumes."""
    path = layout.decontamination_report
    if not path.exists():
        return set()
    table = pq.read_table(path)
    if "image" not in table.column_names:
        raise ReleaseError(f"{path}: no `image` column; rerun the decontaminated asset to rewrite it")
    return set(table["image"].to_pylist())


# --- the release-records table ----------------------------------------------------------------------

RELEASE_RECORDS_SCHEMA = GENERATED_SCHEMA  # the same columns, each row checked, sorted by id, once per id
REJECTED_NAME = "rejected.parquet"  # in the release folder: what was not released, and why
RUN_ROWS = 65_536  # rows sorted in memory per spilled run
RUN_BATCH = 512  # rows per batch of a spilled run: the merge holds about one batch per run
OUT_ROWS = 16_384  # rows per row group of the table
_SEQ, _SRC = "_seq", "_src"  # input order and input file of a row while it is being sorted
_COLUMNS = [f.name for f in GENERATED_SCHEMA]


@dataclass
class RecordsStats:
    """What building the table did: inputs = released + rejected (and which partition files were absent)."""

    inputs: int = 0
    released: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> rows
    missing_inputs: list[str] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)  # the first rejected rows (for the log)


Reject = Callable[[dict[str, str]], None]


def _rejection(row: dict[str, Any], reason: Reason, detail: str) -> dict[str, str]:
    """A QUARANTINE_SCHEMA row: the record stays out of the release, and says why."""
    return {
        "dataset": row.get("dataset") or "unknown",
        "source_path": row.get("image") or "",
        "step": "release",
        "reason": reason,
        "detail": detail,
    }


def _scan(paths: list[Path], root: Path, stats: RecordsStats, reject: Reject) -> Iterator[pa.Table]:
    """Each generated table in batches, minus rows whose conversations do not parse or break the turn rules,
    with the input order (`_seq`) and file (`_src`) of every row kept for the sort."""
    seq = 0
    for src, path in enumerate(paths):
        if not path.exists():
            stats.missing_inputs.append(str(path.relative_to(root)))
            continue
        rel = path.relative_to(root)
        for batch in iter_row_groups(path, _COLUMNS, 8192):
            n = batch.num_rows
            stats.inputs += n
            keep = [True] * n
            ids = batch.column("id").to_pylist()
            for i, text in enumerate(batch.column("conversations").to_pylist()):
                if ids[i] is None:
                    reason, detail = Reason.NO_ID, "a generated row without an id"
                else:
                    try:
                        reason = check_conversations(json.loads(text or ""))
                        detail = "conversations break the LLaVA turn rules"
                    except json.JSONDecodeError as exc:
                        reason, detail = Reason.CONVERSATIONS_NOT_JSON, str(exc)
                if reason:
                    keep[i] = False
                    row = batch.slice(i, 1).to_pylist()[0]
                    reject(_rejection(row, reason, f"{rel}: id {row['id']}: {detail}"))
            table = batch.cast(GENERATED_SCHEMA)
            table = table.append_column(_SEQ, pa.array(range(seq, seq + n), pa.int64()))
            table = table.append_column(_SRC, pa.array([src] * n, pa.int32()))
            seq += n
            yield table if all(keep) else table.filter(pa.array(keep))


def _spill(tables: Iterable[pa.Table], folder: Path) -> list[Path]:
    """Sorted runs of at most RUN_ROWS rows, as Arrow IPC streams under `folder`."""
    return spill_sorted(
        tables, folder, lambda t: t.sort_by([("id", "ascending"), (_SEQ, "ascending")]), RUN_ROWS, RUN_BATCH
    )


def _run_rows(path: Path) -> Iterator[tuple[str, int, str, int, pa.RecordBatch]]:
    """(id, seq, image, index, batch) of every row of a run, in order; read a batch at a time (not mapped)."""
    with pa.OSFile(str(path)) as source:
        for batch in pa.ipc.open_stream(source):
            ids, seqs = batch.column("id").to_pylist(), batch.column(_SEQ).to_pylist()
            images = batch.column("image").to_pylist()
            for i in range(batch.num_rows):
                yield ids[i], seqs[i], images[i], i, batch


class _Picked:
    """Rows chosen from the runs' batches, in merge order, gathered into one table per OUT_ROWS."""

    def __init__(self) -> None:
        self.parts: dict[int, tuple[pa.RecordBatch, list[int]]] = {}
        self.order: list[tuple[int, int]] = []

    def add(self, batch: pa.RecordBatch, index: int) -> None:
        entry = self.parts.setdefault(id(batch), (batch, []))  # the batch is held here: its id stays unique
        self.order.append((id(batch), len(entry[1])))
        entry[1].append(index)

    def __len__(self) -> int:
        return len(self.order)

    def table(self) -> pa.Table:
        base, pieces, offset = {}, [], 0
        for key, (batch, indices) in self.parts.items():
            base[key] = offset
            pieces.append(batch.take(pa.array(indices, pa.int32())))
            offset += len(indices)
        order = pa.array([base[key] + k for key, k in self.order], pa.int64())
        self.parts, self.order = {}, []
        return pa.Table.from_batches(pieces).take(order).drop_columns([_SEQ, _SRC])


def validated_tables(
    layout: OutputLayout,
    partitions: Iterable[str],
    spill_dir: Path,
    reject: Reject,
    stats: RecordsStats,
) -> Iterator[pa.Table]:
    """The released rows of every generated table as GENERATED_SCHEMA tables, sorted by id.

    Rejects (with reason): a row without an id, conversations that do not parse or break the LLaVA turn
    rules, and, taking the rows of an id in input order: a second row of an id already released, an image
    decontamination removed (generated tables older than the last decontamination), and a missing image.
    """
    paths = input_paths(layout, partitions)
    removed = removed_images(layout)
    runs = _spill(_scan(paths, layout.root, stats, reject), spill_dir)

    @lru_cache(maxsize=4096)  # the records of one image sit next to each other in id order
    def image_ok(image: str) -> bool:
        return image.startswith("images/") and (layout.root / image).is_file()

    def rejected(batch: pa.RecordBatch, i: int, reason: Reason, why: str) -> None:
        row = {k: batch.column(k)[i].as_py() for k in ("id", "dataset", "image")}
        where = f"{paths[batch.column(_SRC)[i].as_py()].relative_to(layout.root)}: id {row['id']}"
        reject(_rejection(row, reason, f"{where}: {why}"))

    picked = _Picked()
    current, released = None, False
    for rid, _seq, image, i, batch in heapq.merge(*(_run_rows(p) for p in runs)):
        if rid != current:
            current, released = rid, False
        if released:
            rejected(batch, i, Reason.DUPLICATE_ID, "id already released")
        elif image in removed:
            rejected(
                batch,
                i,
                Reason.BENCHMARK_MATCH,
                f"image {image} was removed by decontamination (regenerate this partition)",
            )
        elif not image_ok(image):
            rejected(batch, i, Reason.MISSING_IMAGE, f"no image file {image}")
        else:
            released = True
            picked.add(batch, i)
            if len(picked) >= OUT_ROWS:
                stats.released += len(picked)
                yield picked.table()
    if len(picked):
        stats.released += len(picked)
        yield picked.table()
    for path in runs:
        path.unlink()


def write_release_records(layout: OutputLayout, partitions: Iterable[str] = SHARD_KEYS) -> RecordsStats:
    """`release_records.parquet` and `release/rejected.parquet` from every generated table (streamed)."""
    stats = RecordsStats()
    pending: list[dict[str, str]] = []
    layout.root.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=".release_records.", dir=layout.root) as spill,
        atomic_path(layout.release_records) as tmp,
        pq.ParquetWriter(tmp, RELEASE_RECORDS_SCHEMA) as writer,
        atomic_path(layout.release / REJECTED_NAME) as rejected_tmp,
        pq.ParquetWriter(rejected_tmp, QUARANTINE_SCHEMA) as rejected_writer,
    ):

        def reject(row: dict[str, str]) -> None:
            stats.rejected[row["reason"]] += 1
            if len(stats.examples) < 20:
                stats.examples.append(row)
            pending.append(row)
            if len(pending) >= 4096:
                rejected_writer.write_table(pa.Table.from_pylist(pending, schema=QUARANTINE_SCHEMA))
                pending.clear()

        for table in validated_tables(layout, partitions, Path(spill), reject, stats):
            writer.write_table(table)
        if pending:
            rejected_writer.write_table(pa.Table.from_pylist(pending, schema=QUARANTINE_SCHEMA))
    return stats


def release_row(row: dict[str, Any], root: Path | str) -> ReleaseRow:
    return ReleaseRow(
        record=to_record(row, json.loads(row["conversations"])),
        image_file=os.path.join(root, row["image"]),
        image_md5=row["image_md5"] or "",
        sample_id=row["sample_id"],
        modality=row["modality"],
        department=row["department"],
        task_type=row["task_type"],
        clinical_task=row["clinical_task"],
        confidence=row["confidence"],
    )


class ReleaseRecords:
    """The release-records table as ReleaseRows, read a batch at a time; iterate it as often as needed."""

    def __init__(self, layout: OutputLayout, batch_size: int = 4096):
        self.path, self.root, self.batch_size = layout.release_records, str(layout.root), batch_size
        if not self.path.exists():
            raise ReleaseError(f"{self.path} not found: materialize `release_records` first")

    def __len__(self) -> int:
        return pq.ParquetFile(self.path).metadata.num_rows

    def __iter__(self) -> Iterator[ReleaseRow]:
        return self.rows()

    def rows(
        self, kinds: Iterable[str] | None = None, languages: Iterable[str] | None = None
    ) -> Iterator[ReleaseRow]:
        """In id order; `kinds`/`languages` select rows before they become Python objects."""
        for table in self.tables(kinds, languages):
            for row in table.to_pylist():
                yield release_row(row, self.root)

    def tables(
        self,
        kinds: Iterable[str] | None = None,
        languages: Iterable[str] | None = None,
        columns: list[str] | None = None,
    ) -> Iterator[pa.Table]:
        kind_set = pa.array(list(kinds), pa.string()) if kinds is not None else None
        language_set = pa.array(list(languages), pa.string()) if languages is not None else None
        for table in iter_row_groups(self.path, columns or _COLUMNS, self.batch_size):
            if kind_set is not None:
                table = table.filter(pc.is_in(table["kind"], value_set=kind_set))
            if language_set is not None:
                table = table.filter(pc.is_in(table["language"], value_set=language_set))
            if table.num_rows:
                yield table


def load_records(layout: OutputLayout, partitions: Iterable[str] = SHARD_KEYS) -> LoadedRecords:
    """Every released row of every partition as a ReleaseRow, sorted by id, in memory (tests, small tools).

    The same checks as `write_release_records` (see `validated_tables`), without writing the table.
    """
    out = LoadedRecords(rows=[])
    stats = RecordsStats()
    with tempfile.TemporaryDirectory(prefix="gmai-release-records.") as spill:
        for table in validated_tables(layout, partitions, Path(spill), out.rejected.append, stats):
            out.rows += [release_row(row, str(layout.root)) for row in table.to_pylist()]
    out.missing_inputs, out.inputs = stats.missing_inputs, stats.inputs
    return out


# Built once, not per call as json.dumps with options does.
_CANONICAL = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def record_json(record: dict[str, Any]) -> bytes:
    """Canonical bytes of a record: the same record always gives the same bytes (shard hashes stay stable)."""
    return _CANONICAL.encode(record).encode("utf-8")
