"""Content-addressed response cache: one SQLite database, `llm_cache/responses.sqlite`, keyed by request.

Every answer is stored, valid or not, so a re-run replays the same decisions (including the one
retry of an invalid answer, whose prompt differs and so has its own key) and sends nothing.
Transport failures are not stored: a re-run tries them again.

At the paper's scale a cache holds ~15M answers; as one file per request (what earlier versions
wrote: `llm_cache/<k[:2]>/<k[2:4]>/<key>.json`) that is 15M small files on a shared filesystem. Here
they are rows of one table in WAL mode (the database, its `-wal` and `-shm` files): any number of
processes read at once and writers take turns per transaction, so two generation partitions and a
Batch API collect can write at the same time. A chunk's answers go in one transaction. WAL keeps
its index in shared memory, so every process using one cache must run on the same host (SQLite:
https://www.sqlite.org/wal.html); steps spread over several hosts need `journal_mode="delete"` on a
filesystem whose POSIX locks work.

A cache of per-request files from an earlier version is moved into the database the first time the
cache is used (under a lock, so concurrent first users wait for one migration), file by file, in
batches: a crash mid-way leaves every answer either in the database or still in its file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from gmai_pipeline.generation.requests import Completion

DB_NAME = "responses.sqlite"
LOCK_NAME = ".migrate.lock"
UNREADABLE_DIR = "unreadable"  # legacy files that were not a cache entry (kept for a person to look at)
FORMAT_VERSION = "1"
BUSY_TIMEOUT_S = 120.0  # a writer waits this long for another process's transaction
MIGRATE_BATCH = 5000
_QUERY_CHUNK = 500  # keys per SELECT ... IN (...) (SQLite's default limit on parameters is 32,766)
_HEX = set("0123456789abcdef")

# Answers are appended in rowid order (sequential pages) and found through a unique index of the 32-byte
# key: random SHA-256 keys then dirty the small index, not the table, and inserts cost a third of a
# table clustered on the key (measured: 18k vs 7-10k inserts/s, 2.4x less CPU).
SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (key BLOB NOT NULL UNIQUE, response TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


class CacheError(RuntimeError):
    """The cache database cannot be used as it is (the message names the file and the fix)."""


def _is_legacy_dir(path: Path) -> bool:
    return path.is_dir() and len(path.name) == 2 and set(path.name) <= _HEX


def _legacy_entry(path: Path) -> dict | None:
    """A per-request file of an earlier version, or None when it is not a readable entry for its key."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("key") != path.stem or len(path.stem) != 64:
            return None
        bytes.fromhex(path.stem)
        Completion.from_json(data["response"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data


class ResponseCache:
    """`get`/`put` answers by request key (the request's SHA-256, hex); `get_many`/`put_many` for a chunk at
    once (one transaction).

    Opened lazily: a run that never asks (the template backend) creates nothing.
    """

    def __init__(
        self, root: Path, journal_mode: str = "wal", log: Callable[[str], None] | None = None
    ) -> None:
        self.root = Path(root)
        self.path = self.root / DB_NAME
        self.journal_mode = journal_mode
        self.log = log or (lambda _: None)
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._lock = threading.Lock()

    # --- connection -------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._conn = None  # a connection opened before a fork is never used in the child
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            mode = conn.execute(f"PRAGMA journal_mode = {self.journal_mode}").fetchone()[0]
            if mode.lower() != self.journal_mode.lower():
                raise CacheError(
                    f"{self.path}: SQLite refused journal_mode={self.journal_mode} (got {mode}); WAL needs a "
                    "local filesystem: put GMAI_OUTPUT_ROOT's llm_cache on one, or use journal_mode='delete'"
                )
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a crash loses no committed answer
            conn.executescript(SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT_VERSION,))
        except sqlite3.DatabaseError as exc:
            raise CacheError(
                f"{self.path}: not a usable response cache ({exc}); move it away to start an empty cache"
            ) from exc
        self._conn, self._pid = conn, os.getpid()
        self._migrate_legacy()
        return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE): no deadlock between two writers."""
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- reading and writing ----------------------------------------------------------------------------

    def get(self, key: str) -> Completion | None:
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, Completion]:
        """The cached answers among `keys` (missing keys are absent from the result)."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, Completion] = {}
        with self._lock:
            conn = self._connect()
            for i in range(0, len(keys), _QUERY_CHUNK):
                part = [bytes.fromhex(k) for k in keys[i : i + _QUERY_CHUNK]]
                marks = ",".join("?" * len(part))
                for key, text in conn.execute(
                    f"SELECT key, response FROM responses WHERE key IN ({marks})", part
                ):
                    try:
                        out[key.hex()] = Completion.from_json(json.loads(text), cached=True)
                    except (ValueError, KeyError, TypeError):  # a damaged row reads as a miss
                        continue
        return out

    def put(self, key: str, completion: Completion) -> None:
        self.put_many([(key, completion)])

    def put_many(self, items: Iterable[tuple[str, Completion]]) -> int:
        """Store answers in one transaction; a key already stored is replaced. Returns how many."""
        rows = [(bytes.fromhex(key), json.dumps(c.to_json(), ensure_ascii=False)) for key, c in items]
        if not rows:
            return 0
        with self._lock, self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO responses (key, response) VALUES (?, ?)", rows)
        return len(rows)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return (
                self._connect()
                .execute("SELECT 1 FROM responses WHERE key = ?", (bytes.fromhex(key),))
                .fetchone()
                is not None
            )

    def __len__(self) -> int:
        with self._lock:
            return self._connect().execute("SELECT count(*) FROM responses").fetchone()[0]

    def files(self) -> list[Path]:
        """Every file the cache keeps (the batch folder of the Batch API backend is not the cache)."""
        return sorted(p for p in self.root.iterdir() if p.is_file()) if self.root.is_dir() else []

    # --- the per-request files of earlier versions ---------------------------------------------------

    def _legacy_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if _is_legacy_dir(p)) if self.root.is_dir() else []

    def _migrate_legacy(self) -> None:
        if not self._legacy_dirs():
            return
        with open(self.root / LOCK_NAME, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent first user waits here, then finds nothing left
            try:
                dirs = self._legacy_dirs()
                if dirs:
                    moved, unreadable = self._migrate(dirs)
                    self.log(
                        f"{self.root}: moved {moved} cached answers from per-request files into {DB_NAME}"
                        + (
                            f"; {unreadable} files were not cache entries: {self.root / UNREADABLE_DIR}"
                            if unreadable
                            else ""
                        )
                    )
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _migrate(self, dirs: list[Path]) -> tuple[int, int]:
        conn = self._conn
        assert conn is not None
        moved = unreadable = 0
        batch: list[tuple[str, str]] = []
        done: list[Path] = []

        def flush() -> None:
            nonlocal batch, done
            conn.execute("BEGIN IMMEDIATE")
            # An answer already in the database was stored later than its file: it wins.
            conn.executemany("INSERT OR IGNORE INTO responses (key, response) VALUES (?, ?)", batch)
            conn.execute("COMMIT")
            for path in done:  # only once the rows are committed
                path.unlink(missing_ok=True)
            batch, done = [], []

        for top in dirs:
            for path in sorted(top.rglob("*.json")):
                data = _legacy_entry(path)
                ok = data is not None
                if not ok:  # the old cache read these as misses; keep them for a person, out of the way
                    target = self.root / UNREADABLE_DIR / path.relative_to(self.root)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(path, target)
                    unreadable += 1
                    continue
                batch.append((bytes.fromhex(path.stem), json.dumps(data["response"], ensure_ascii=False)))
                done.append(path)
                moved += 1
                if len(batch) >= MIGRATE_BATCH:
                    flush()
        if batch:
            flush()
        for top in dirs:
            for folder, _dirs, _files in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):  # not empty: something that is not ours is left there
                    os.rmdir(folder)
        return moved, unreadable
