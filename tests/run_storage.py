"""Everything a Dagster instance stored, as text, so a test can grep it for what must never be there.

SQLite storage keeps run and job snapshots zlib-compressed, so a byte grep of the `.db` files
misses them: every table of every database is read and each blob is decompressed when it can be.
Compute logs and any other file under DAGSTER_HOME are read as they are.
"""

from __future__ import annotations

import contextlib
import sqlite3
import zlib
from pathlib import Path


def _cell(value: object) -> str:
    if isinstance(value, bytes | memoryview):
        data = bytes(value)
        with contextlib.suppress(zlib.error):
            data = zlib.decompress(data)
        return data.decode("utf-8", "replace")
    return "" if value is None else str(value)


def stored_text(*roots: Path) -> str:
    """The decompressed contents of every SQLite database and the text of every other file under `roots`."""
    parts: list[str] = []
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            parts.append(f"\n== {path}\n")
            if path.suffix == ".db":
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                    tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
                    for table in tables:
                        for row in db.execute(f'select * from "{table}"'):
                            parts.append(" ".join(_cell(v) for v in row))
            else:
                parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)
