"""Scale-out: the demo's per-dataset steps run on two Celery workers through a real Redis broker.

The test starts Debian's redis-server and PostgreSQL (the shared instance) on free loopback ports,
two `dagster-celery worker start` processes (`w1@host`, `w2@host`, one task at a time each,
configured by deploy/celery.yaml), and runs
`demo_ingest_job` (source/* and normalized/* of every demo dataset) with `GMAI_EXECUTOR=celery`.
Each step's "Executing steps ... in celery worker" engine event names the worker that ran it.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
from services import (
    DEPLOY,
    REPO,
    VENV_BIN,
    install_dagster_yaml,
    postgres_server,
    redis_server,
    service_env,
    spawn,
    stop_group,
    wait_for,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]

JOB = "demo_ingest_job"


def _worker_events(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """step key -> the Celery worker hostname that executed it."""
    where: dict[str, str] = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        metadata = event.engine_event_data.metadata if event and event.engine_event_data else {}
        worker = metadata.get("Celery worker")
        if worker is not None and event.step_key:
            where[event.step_key] = worker.value if hasattr(worker, "value") else str(worker)
    return where


def test_demo_steps_spread_over_two_celery_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "dagster_home"
    # Workers and the run share the instance, as on a cluster: the Postgres template (SQLite files
    # written by three processes at once race on creating their tables).
    install_dagster_yaml("dagster.postgres.yaml", home)
    workers: list[subprocess.Popen] = []
    with postgres_server() as pg, redis_server(tmp_path) as redis_url:
        env = service_env(
            DAGSTER_HOME=str(home),
            GMAI_OUTPUT_ROOT=str(tmp_path / "out"),
            GMAI_EXECUTOR="celery",
            GMAI_CELERY_BROKER_URL=f"{redis_url}/0",
            GMAI_CELERY_BACKEND_URL=f"{redis_url}/1",
            **pg.env(),
        )
        for key, value in pg.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.get() as instance:  # create the schema once, before three processes open it
            assert not instance.get_runs()
        try:
            for name in ("w1", "w2"):
                log = tmp_path / f"{name}.log"
                workers.append(
                    spawn(
                        [str(VENV_BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                         "-y", str(DEPLOY / "celery.yaml"), "-n", name, "--", "--concurrency=1"],
                        log,
                        env,
                    )
                )  # fmt: skip
            for name, proc in zip(("w1", "w2"), workers, strict=True):
                log = tmp_path / f"{name}.log"
                wait_for(
                    lambda log=log, proc=proc: (
                        "ready." in log.read_text(errors="replace") or proc.poll() is not None
                    ),
                    180,
                    f"celery worker {name}",
                    0.5,
                    log,
                )
                assert proc.poll() is None, log.read_text(errors="replace")[-3000:]

            run = subprocess.run(
                [str(VENV_BIN / "dagster"), "job", "execute", "-m", "gmai_pipeline.definitions", "-j", JOB],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=600,
            )
            logs = "\n".join(
                (tmp_path / f"{n}.log").read_text(errors="replace")[-2000:] for n in ("w1", "w2")
            )
            assert run.returncode == 0, (run.stdout + run.stderr)[-4000:] + logs
        finally:
            for proc in workers:
                stop_group(proc)

        with dg.DagsterInstance.get() as instance:
            runs = instance.get_runs()
            assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
            where = _worker_events(instance, runs[0].run_id)
            steps = {
                r.dagster_event.step_key
                for r in instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
            }
    assert steps and set(where) == steps  # every step went through a Celery worker
    assert "sources" in steps and any(
        s.startswith("normalized__") for s in steps
    )  # one scan step, per-dataset normalize
    per_worker = Counter(w.split("@", 1)[0] for w in where.values())
    print(f"steps per Celery worker: {dict(per_worker)}")
    assert set(per_worker) == {"w1", "w2"}, per_worker  # both workers took steps
