"""The SQLite event log of deploy/dagster.sqlite.yaml writes what Dagster's own class writes, with its engines kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage

from gmai_pipeline.instance_storage import KeptEngineSqliteEventLogStorage

ROOT = Path(__file__).resolve().parent.parent


@dg.asset(check_specs=[dg.AssetCheckSpec("positive", asset="numbers")])
def numbers() -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={"rows": 3}, check_results=[dg.AssetCheckResult(check_name="positive", passed=True)]
    )


@dg.asset(deps=[numbers])
def doubled() -> None:
    pass


def _instance(home: Path, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "deploy" / "dagster.sqlite.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return dg.DagsterInstance.get()


def test_the_template_uses_it_and_dagsters_class_reads_what_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    with _instance(home, monkeypatch) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, KeptEngineSqliteEventLogStorage)
        assert Path(storage._base_dir) == home / "storage"  # where Dagster's own class keeps them
        for _ in range(2):
            assert dg.materialize([numbers, doubled], instance=instance).success
        index_engine = storage._engines[INDEX_SHARD_NAME]
        runs = instance.get_runs()
        ours = {r.run_id: [e.dagster_event_type for e in instance.all_logs(r.run_id)] for r in runs}
        assert storage._engines[INDEX_SHARD_NAME] is index_engine  # one engine for the life of the process

    stock = SqliteEventLogStorage(str(home / "storage"))
    try:
        assert {
            r.run_id: [e.dagster_event_type for e in stock.get_logs_for_run(r.run_id)] for r in runs
        } == ours
        latest = stock.get_latest_materialization_events([dg.AssetKey("numbers"), dg.AssetKey("doubled")])
        assert all(latest.values()) and latest[dg.AssetKey("numbers")].run_id in ours
        assert latest[dg.AssetKey("numbers")].asset_materialization.metadata["rows"].value == 3
        executions = stock.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("numbers"), "positive"), limit=10
        )
        assert len(executions) == 2 and {e.run_id for e in executions} == set(ours)
    finally:
        stock.dispose()


def test_run_engines_are_bounded_and_a_fork_gets_its_own(tmp_path: Path) -> None:
    storage = KeptEngineSqliteEventLogStorage(str(tmp_path / "storage"))
    try:
        index = storage._engine(INDEX_SHARD_NAME)
        for i in range(40):  # a web server reading many runs keeps only the latest few engines
            storage._engine(f"run-{i}")
        assert (
            len(storage._engines) == 17
            and INDEX_SHARD_NAME in storage._engines
            and "run-39" in storage._engines
        )
        storage._engines_pid = -1  # as after os.fork(): the parent's connections are not the child's
        assert storage._engine(INDEX_SHARD_NAME) is not index and len(storage._engines) == 1
    finally:
        storage.dispose()


def test_without_dagster_home_it_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with pytest.raises(ValueError, match="DAGSTER_HOME"):
        KeptEngineSqliteEventLogStorage.from_config_value(None, {})
