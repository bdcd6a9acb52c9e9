"""What every benchmark reader yields, and the small helpers they share.

Readers are generators: one `BenchmarkImage` per distinct benchmark image, read as it is needed,
so a 9 GB TSV or a folder of 100k images never sits in memory. Problems (a referenced image that
is missing, a cell that is not base64) are appended to the caller's `problems` list with the file
named, never silently skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pyarrow.parquet as pq


class BenchmarkImage(NamedTuple):
    benchmark: str  # e.g. "GMAI-MMBench_VAL" (a VLMEvalKit dataset name) or "VQA-RAD"
    item_id: str  # the benchmark's own id for the (first) item showing this image
    image_bytes: bytes


def read_image_file(path: Path, benchmark: str, item_id: str, problems: list[str]) -> BenchmarkImage | None:
    try:
        return BenchmarkImage(benchmark, item_id, path.read_bytes())
    except OSError as exc:
        problems.append(f"{benchmark}: item {item_id}: cannot read image {path}: {exc.strerror or exc}")
        return None


def first_existing(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.exists()), None)


def iter_parquet_rows(path: Path, columns: list[str], batch_size: int = 32) -> Iterator[dict]:
    """Rows of a Parquet file a few at a time (image columns hold whole encoded images)."""
    pf = pq.ParquetFile(path)
    present = [c for c in columns if c in pf.schema_arrow.names]
    for batch in pf.iter_batches(batch_size=batch_size, columns=present):
        yield from batch.to_pylist()


def struct_bytes(value: object) -> bytes | None:
    """HF `datasets` Image feature in Parquet: a struct {bytes, path}; None when absent."""
    if isinstance(value, dict):
        data = value.get("bytes")
        return bytes(data) if data else None
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return None
