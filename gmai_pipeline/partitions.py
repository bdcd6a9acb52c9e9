"""Stable hash shards of `sample_id`: the partitions of the generation assets.

The shard of a sample depends only on its id, so adding data moves no existing sample, and
the response cache (keyed by request, not shard) makes a change of shard count free.

A table that generation reads by shard (`decontaminated.parquet`) carries the shard of each row in
a `shard` column, written once, in row groups of a single shard each: a partition reads only its
own row groups (found from the column's statistics in the footer) and counts its rows from the
footer alone, instead of every partition reading and rehashing the whole table.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gmai_pipeline.schemas import SHARD_COLUMN, SHARDS_METADATA_KEY

N_SHARDS = int(os.environ.get("GMAI_GENERATION_SHARDS", "8"))
SHARD_KEYS = [f"{i:03d}" for i in range(N_SHARDS)]
# A shard's rows go out as a row group once it has ROW_GROUP_ROWS of them, and every shard's once BUFFER_ROWS
# rows wait in all: memory stays the same whatever the table's size.
ROW_GROUP_ROWS = 8192
BUFFER_ROWS = 65_536


class StaleShardsError(ValueError):
    """A table's shard column was made for another number of shards than generation uses now."""


def case_partition(case: str, n_partitions: int) -> int:
    """The normalization partition of a case (`partitions:` in a catalog entry): a stable hash of its id,
    so a rerun puts every case where it was and redoes one partition without touching the others."""
    digest = hashlib.sha256(case.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_partitions


def shard_of(sample_id: str, n_shards: int = N_SHARDS) -> str:
    digest = hashlib.sha256(sample_id.encode("utf-8")).digest()
    return f"{int.from_bytes(digest[:8], 'big') % n_shards:03d}"


def with_shard_column(table: pa.Table, n_shards: int = N_SHARDS) -> pa.Table:
    shards = [shard_of(s, n_shards) for s in table.column("sample_id").to_pylist()]
    return table.append_column(SHARD_COLUMN, pa.array(shards, pa.string()))


def sharded_schema(schema: pa.Schema, n_shards: int = N_SHARDS) -> pa.Schema:
    return schema.with_metadata({**(schema.metadata or {}), SHARDS_METADATA_KEY: str(n_shards).encode()})


class ShardedWriter:
    """Writes tables (with a shard column) to a ParquetWriter as row groups of one shard each.

    The order of rows within a shard is the order they came in.
    """

    def __init__(self, writer: pq.ParquetWriter):
        self.writer = writer
        self.buffers: dict[str, list[pa.Table]] = {}
        self.rows: dict[str, int] = {}

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        column = table.column(SHARD_COLUMN)
        for shard in pc.unique(column).to_pylist():
            piece = table.filter(pc.equal(column, shard))
            self.buffers.setdefault(shard, []).append(piece)
            self.rows[shard] = self.rows.get(shard, 0) + piece.num_rows
            if self.rows[shard] >= ROW_GROUP_ROWS:
                self._flush(shard)
        if sum(self.rows.values()) >= BUFFER_ROWS:
            self.flush()

    def _flush(self, shard: str) -> None:
        self.writer.write_table(pa.concat_tables(self.buffers.pop(shard)).combine_chunks())
        del self.rows[shard]

    def flush(self) -> None:
        for shard in sorted(self.buffers):
            self._flush(shard)


def _row_groups(meta: pq.FileMetaData, column: int, shard: str) -> tuple[list[int], list[int]]:
    """(row groups holding only `shard`, row groups that may hold it among others)."""
    only, mixed = [], []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max:
            mixed.append(i)
        elif stats.min == stats.max == shard:
            only.append(i)
        elif stats.min <= shard <= stats.max:
            mixed.append(i)
    return only, mixed


def shard_column_index(pf: pq.ParquetFile, path, n_shards: int = N_SHARDS) -> int | None:
    """Index of the shard column, None for a table written before it existed; an error if it is stale."""
    names = pf.schema_arrow.names
    if SHARD_COLUMN not in names:
        return None
    made_for = (pf.schema_arrow.metadata or {}).get(SHARDS_METADATA_KEY)
    if made_for is None or int(made_for) != n_shards:
        raise StaleShardsError(
            f"{path}: its shard column was made for {made_for.decode() if made_for else 'an unknown number of'} "
            f"generation shards, but GMAI_GENERATION_SHARDS is {n_shards} now: rematerialize `decontaminated`"
        )
    return names.index(SHARD_COLUMN)


def read_shard(
    path, shard: str, columns: list[str], batch_size: int = 8192, n_shards: int = N_SHARDS
) -> Iterator[pa.RecordBatch] | None:
    """Batches of `columns` of the rows of `shard`, in file order, reading only the row groups that hold
    them; None when the table has no shard column (the caller must hash the rows itself)."""
    pf = pq.ParquetFile(path)
    index = shard_column_index(pf, path, n_shards)
    if index is None:
        return None
    only, mixed = _row_groups(pf.metadata, index, shard)

    def batches() -> Iterator[pa.RecordBatch]:
        wanted = sorted(only + mixed)
        if not wanted:
            return
        mixed_set = set(mixed)
        for i in wanted:
            table = pf.read_row_group(i, columns=[*columns, SHARD_COLUMN] if i in mixed_set else columns)
            if i in mixed_set:
                table = table.filter(pc.equal(table.column(SHARD_COLUMN), shard)).select(columns)
            yield from table.to_batches(max_chunksize=batch_size)

    return batches()


def count_shard(path, shard: str, n_shards: int = N_SHARDS) -> int | None:
    """Rows of `shard`, from the footer (row groups of mixed shards are counted from their column only);
    None when the table has no shard column."""
    pf = pq.ParquetFile(path)
    index = shard_column_index(pf, path, n_shards)
    if index is None:
        return None
    only, mixed = _row_groups(pf.metadata, index, shard)
    n = sum(pf.metadata.row_group(i).num_rows for i in only)
    for i in mixed:
        column = pf.read_row_group(i, columns=[SHARD_COLUMN]).column(0)
        n += pc.sum(pc.equal(column, shard)).as_py() or 0
    return n
