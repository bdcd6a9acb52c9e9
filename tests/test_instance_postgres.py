"""The instance templates in deploy/, and a real PostgreSQL-backed instance running a job.

The Postgres test starts Debian's PostgreSQL in a temp folder, installs deploy/dagster.postgres.yaml
as $DAGSTER_HOME/dagster.yaml, sets the pool limits with deploy/set-pool-limits.sh, runs
`dagster job execute -m gmai_pipeline.definitions -j demo_ingest_job` in a subprocess, and reads the run back
from Postgres. (`demo_ingest_job` is the demo's source/* and normalized/* steps; the full demo_job
is exercised by the end-to-end and browser tests.)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml
from services import DEPLOY, REPO, VENV_BIN, install_dagster_yaml, postgres_server, service_env

JOB = os.environ.get("GMAI_PG_TEST_JOB", "demo_ingest_job")


def _instance(dagster_home: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> dg.DagsterInstance:
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return dg.DagsterInstance.get()


@pytest.mark.parametrize("template", ["dagster.sqlite.yaml", "dagster.postgres.yaml"])
def test_templates_configure_queue_pools_and_crash_only_retries(template: str) -> None:
    config = yaml.safe_load((DEPLOY / template).read_text())
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["default_limit"] >= 1
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= 1
    assert config["run_retries"] == {
        **config["run_retries"],
        "enabled": True,
        "retry_on_asset_or_op_failure": False,
    }
    assert config["run_monitoring"]["enabled"] is True
    text = (DEPLOY / template).read_text()
    assert "password:" not in text or "env: DAGSTER_PG_PASSWORD" in text  # secrets only from the environment


@pytest.mark.slow  # two `dagster` CLI start-ups
def test_sqlite_template_loads_with_pool_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "dagster_home"
    install_dagster_yaml("dagster.sqlite.yaml", home)
    env = service_env(DAGSTER_HOME=str(home), DAGSTER=str(VENV_BIN / "dagster"), GMAI_POOL_LLM_LIMIT="6")
    subprocess.run(
        ["bash", str(DEPLOY / "set-pool-limits.sh")], check=True, env=env, cwd=REPO, capture_output=True
    )
    with _instance(home, monkeypatch) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert not instance.run_retries_retry_on_asset_or_op_failure
        assert instance.event_log_storage.get_concurrency_info("llm").slot_count == 6
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1
        assert str(instance.root_directory) == str(home)


@pytest.mark.services
@pytest.mark.slow
def test_postgres_instance_runs_a_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "dagster_home"
    out = tmp_path / "out"
    with postgres_server() as pg:
        install_dagster_yaml("dagster.postgres.yaml", home)
        # In-process executor: this test is about the instance; one process loads the code location once
        # (the multiprocess executor loads it again for every step).
        env = service_env(
            DAGSTER_HOME=str(home), GMAI_OUTPUT_ROOT=str(out), GMAI_EXECUTOR="in_process", **pg.env()
        )
        env["DAGSTER"] = str(VENV_BIN / "dagster")
        subprocess.run(
            ["bash", str(DEPLOY / "set-pool-limits.sh")], check=True, env=env, cwd=REPO, capture_output=True
        )
        proc = subprocess.run(
            [str(VENV_BIN / "dagster"), "job", "execute", "-m", "gmai_pipeline.definitions", "-j", JOB],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]

        with _instance(home, monkeypatch, **pg.env()) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            runs = instance.get_runs()
            assert [r.job_name for r in runs] == [JOB]
            assert runs[0].status == dg.DagsterRunStatus.SUCCESS
            keys = {k.to_user_string() for k in instance.get_asset_keys()}
            assert any(k.startswith("source/") for k in keys), keys
            assert any(k.startswith("normalized/") for k in keys), keys
            assert instance.event_log_storage.get_concurrency_info("llm").slot_count == 8

        # The same facts straight from PostgreSQL: the run and its events live in the database.
        with pg.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE pipeline_name = %s", (JOB,))
            assert cur.fetchall() == [("SUCCESS",)]
            cur.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
            assert cur.fetchone()[0] >= 2
        conn.close()
    assert (out / "manifests").is_dir()
