"""Sorted runs on disk: the first half of the release's external merge sorts.

`release_records` sorts every generated row by id and `release_images` every released path in folder-walk
order; neither holds the release in memory. Both cut their input into runs sorted in memory, written as
Arrow IPC streams a merge reads back one batch at a time (`heapq.merge` over the runs, in each module)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow as pa

RUN_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4" if pa.Codec.is_available("lz4") else None)


def write_run(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> Path:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema, options=RUN_OPTIONS) as w:
        for batch in batches:
            w.write_batch(batch)
    return path


def spill_sorted(
    tables: Iterable[pa.Table],
    folder: Path,
    prepare: Callable[[pa.Table], pa.Table],
    run_rows: int,
    batch_rows: int,
    prefix: str = "run-",
) -> list[Path]:
    """Runs of about `run_rows` rows each, `prepare`d (sorted, and whatever else the caller needs) and
    written under `folder` as `<prefix>NNNNNN.arrow` in batches of `batch_rows`."""
    runs: list[Path] = []
    buffer: list[pa.Table] = []
    buffered = 0

    def flush() -> None:
        table = prepare(pa.concat_tables(buffer))
        path = folder / f"{prefix}{len(runs):06d}.arrow"
        runs.append(write_run(path, table.schema, table.to_batches(max_chunksize=batch_rows)))

    for table in tables:
        if table.num_rows:
            buffer.append(table)
            buffered += table.num_rows
        if buffered >= run_rows:
            flush()
            buffer, buffered = [], 0
    if buffer:
        flush()
    return runs
