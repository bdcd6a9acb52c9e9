"""Dagster's SQLite event log with its engines kept: the event-log storage of `deploy/dagster.sqlite.yaml`.

Dagster's `SqliteEventLogStorage` creates a new SQLAlchemy engine and connection for every write. Closing
the last connection to a WAL database checkpoints it, and every commit syncs the WAL, so each event costs
several fsyncs: an asset event is written to the run's database and mirrored in the index database, an
asset-check event once more. Planning a run writes one such event per asset and per check it selects
(about 700 for `build_dataset_job` over the full catalog, nearly all of it absent on any one machine),
which on a VM's disk took longer than running the demo.

This subclass changes only how connections are made, never what is written:

- the index database (`index.db`) is written through one kept engine whose pooled connection stays open
  for the life of the process: no checkpoint on every close;
- a run's database keeps Dagster's close-after-each-write (the web server's live run view watches that
  file, and the checkpoint on close is what touches it), through a cached engine (no new engine, and no
  recompiled statements, per write);
- every connection commits with `PRAGMA synchronous=NORMAL`: in WAL mode a crash or power cut can lose
  the last commits but never corrupts a database (SQLite's documented guarantee).

Same files, schema and configuration as Dagster's class; swapping back is a one-line change in
`dagster.yaml`. Postgres instances (`deploy/dagster.postgres.yaml`) do not use this.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from dagster import Field, StringSource
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy.pool import NullPool

RUN_ENGINES_KEPT = 16  # a web server reads many runs: keep the engines of the latest few


def _sync_normal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class KeptEngineSqliteEventLogStorage(SqliteEventLogStorage):
    """`SqliteEventLogStorage` whose engines outlive a write (see the module docstring for why)."""

    def __init__(self, base_dir: str, inst_data: Any = None) -> None:
        self._engines: OrderedDict[str, db.Engine] = OrderedDict()
        self._engines_pid = os.getpid()
        super().__init__(base_dir, inst_data)

    @classmethod
    def config_type(cls) -> dict:
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> KeptEngineSqliteEventLogStorage:
        """`base_dir` defaults to `$DAGSTER_HOME/storage`, where Dagster's own class keeps these files (a
        dagster.yaml cannot spell a path relative to the instance)."""
        base_dir = config_value.get("base_dir")
        if not base_dir:
            home = os.environ.get("DAGSTER_HOME")
            if not home:
                raise ValueError(
                    f"{cls.__name__}: set DAGSTER_HOME (the instance's folder) or give event_log_storage a "
                    "config: base_dir: in dagster.yaml"
                )
            base_dir = os.path.join(home, "storage")
        return cls(base_dir, inst_data=inst_data)

    def _engine(self, shard: str) -> db.Engine:
        if self._engines_pid != os.getpid():
            # A forked child: the parent's pooled connections are not this process's to use or close.
            for engine in self._engines.values():
                engine.dispose(close=False)
            self._engines, self._engines_pid = OrderedDict(), os.getpid()
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        url = self.conn_string_for_shard(shard)
        if shard == INDEX_SHARD_NAME:
            # One connection kept open (the lock below serialises its use across threads).
            engine = db.create_engine(
                url,
                pool_size=1,
                max_overflow=2,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            )
        else:
            engine = db.create_engine(
                url, poolclass=NullPool, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
            )
        db.event.listen(engine, "connect", _sync_normal)
        self._engines[shard] = engine
        runs = [s for s in self._engines if s != INDEX_SHARD_NAME]
        for old in runs[: max(0, len(runs) - RUN_ENGINES_KEPT)]:
            self._engines.pop(old).dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def dispose(self) -> None:
        with self._db_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()
        super().dispose()
