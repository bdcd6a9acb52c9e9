"""Where everything lives under `$GMAI_OUTPUT_ROOT`, and atomic writes.

Every file is written to a temporary name in the same folder and renamed into place, so a
crash never leaves a half-written table or shard that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CHUNK = 1 << 20


class OutputLayout:
    """Paths of every table and folder the pipeline writes (the tables' columns: `schemas`)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def manifest(self, dataset: str) -> Path:
        return self.root / "manifests" / f"{dataset}.parquet"

    def normalized(self, dataset: str) -> Path:
        return self.root / "normalized" / f"{dataset}.parquet"

    def quarantine(self, dataset: str) -> Path:
        return self.root / "quarantine" / f"{dataset}.parquet"

    def normalized_part(self, dataset: str, part: int) -> Path:
        """One part of a partitioned dataset (`partitions:`), concatenated into `normalized(dataset)`."""
        return self.root / "normalized" / dataset / f"part-{part:03d}.parquet"

    def quarantine_part(self, dataset: str, part: int) -> Path:
        return self.root / "quarantine" / dataset / f"part-{part:03d}.parquet"

    def part_report(self, dataset: str, part: int) -> Path:
        """What a part counted (inputs, reasons, labels, ...), for the step that joins the parts."""
        return self.root / "normalized" / dataset / f"part-{part:03d}.json"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def annotations(self) -> Path:
        return self.root / "annotations.parquet"

    @property
    def benchmark_hashes(self) -> Path:
        return self.root / "benchmark_hashes.parquet"

    @property
    def decontaminated(self) -> Path:
        return self.root / "decontaminated.parquet"

    @property
    def decontamination_report(self) -> Path:
        return self.root / "decontamination_report.parquet"

    def generated(self, kind: str, partition: str) -> Path:
        """kind: captions | vqa | translations."""
        return self.root / "generated" / kind / f"{partition}.parquet"

    def generation_quarantine(self, kind: str, partition: str) -> Path:
        return self.root / "generated" / "quarantine" / kind / f"{partition}.parquet"

    @property
    def llm_cache(self) -> Path:
        return self.root / "llm_cache"

    @property
    def release_records(self) -> Path:
        """Every generated record that is released, validated once, sorted by id (read by the release)."""
        return self.root / "release_records.parquet"

    @property
    def release(self) -> Path:
        return self.root / "release"

    @property
    def mixtures(self) -> Path:
        return self.root / "release" / "mixtures"

    @property
    def training(self) -> Path:
        return self.root / "training"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


STALE_TEMP_SECONDS = 3600.0
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
_TEMP = re.compile(r"^\..*\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[^.]*\.?tmp$")


def temp_tag() -> str:
    """`{host}.{pid}`: in every temporary name, so a later run can tell whose it was."""
    return f"{_HOST}.{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temp(name: str, mtime: float, now: float | None = None) -> bool:
    """A temporary file left by a killed run: its writer (on this host) is gone, or it is older than
    `STALE_TEMP_SECONDS` (a writer on another host, or a name from before the host/pid tag)."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    m = _TEMP.match(name)
    if m and m["host"] == _HOST and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
        return True
    return (now if now is not None else time.time()) - mtime > STALE_TEMP_SECONDS


def sweep_stale_temps(folder: Path, prefix: str = "", recursive: bool = True) -> int:
    """Remove stale temporary files (`is_stale_temp`) under `folder` whose names start with `prefix`;
    returns how many. A killed run leaves its temporaries behind; nothing else ever deletes them."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                if recursive:
                    removed += sweep_stale_temps(Path(e.path), prefix, recursive)
            elif e.name.startswith(prefix) and is_stale_temp(e.name, e.stat(follow_symlinks=False).st_mtime):
                os.unlink(e.path)
                removed += 1
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    Stale temporaries of the same target (a killed run's) are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path.parent, prefix=f".{path.name}.", recursive=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{temp_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be read by others (a published release)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_parquet(path: Path, batches: Iterable[list[dict]], schema: pa.Schema) -> int:
    """Stream lists of row dicts into one Parquet file atomically; returns the row count.

    Always writes a file (possibly empty, with the schema) so downstream readers never guess.
    """
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for batch in batches:
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                rows += len(batch)
    return rows


def write_table(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def iter_row_groups(
    path: Path, columns: list[str] | None = None, batch_size: int | None = None
) -> Iterator[pa.Table]:
    """A Parquet file a row group at a time, each sliced to at most `batch_size` rows.

    Not `ParquetFile.iter_batches`: that keeps what it has read allocated until it is exhausted (pyarrow
    26: 320 MB held over a 2.6M-row file), so a stream over a big table grew with the table.
    """
    with pq.ParquetFile(path) as pf:
        for i in range(pf.metadata.num_row_groups):
            table = pf.read_row_group(i, columns=columns)
            step = batch_size or table.num_rows or 1
            for start in range(0, table.num_rows, step):
                yield table.slice(start, step)


def batched(rows: Iterable[dict], size: int = 2048) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
