"""The code location: every module in `gmai_pipeline/defs/` contributes its own Definitions, merged here.

Read the asset graph off `gmai_pipeline/defs/`: (catalog report beside it) sources -> normalize -> decontam ->
generation -> release -> training -> evaluation, with the demo's jobs, the schedules and the sensors beside
them. Each job lives beside the assets it selects. What is set once for the whole location is set here: the
executor, from `GMAI_EXECUTOR`:

- unset / `multiprocess`: Dagster's default, one process per step on this machine;
- `in_process`: every step in the run's process;
- `celery`: dagster-celery; broker and result backend from `GMAI_CELERY_BROKER_URL` /
  `GMAI_CELERY_BACKEND_URL`, workers started with `deploy/celery.yaml`;
- `k8s`: dagster-k8s, one Kubernetes Job per step (`pip install dagster-k8s`).

`dagster job execute -m gmai_pipeline.definitions -j demo_job`, `dg check defs` and `dg dev` load `defs`.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from gmai_pipeline.defs.common import catalog

EXECUTORS = ("multiprocess", "in_process", "celery", "k8s")


def executor_from_env() -> dg.ExecutorDefinition | None:
    """The executor named by `GMAI_EXECUTOR` (None: Dagster's default, multiprocess)."""
    kind = os.environ.get("GMAI_EXECUTOR", "multiprocess").strip() or "multiprocess"
    if kind not in EXECUTORS:
        raise ValueError(f"GMAI_EXECUTOR={kind!r} is not one of {', '.join(EXECUTORS)}")
    if kind == "multiprocess":
        return None
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "celery":
        from dagster_celery import celery_executor

        # Read from the environment when the run starts: a broker URL may carry a password, and
        # configured literals would show in the UI's run config.
        return celery_executor.configured(
            {
                "broker": {"env": "GMAI_CELERY_BROKER_URL"},
                "backend": {"env": "GMAI_CELERY_BACKEND_URL"},
            },
            name="celery",
        )
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:  # pragma: no cover - depends on an optional package
        raise ImportError(
            "GMAI_EXECUTOR=k8s needs dagster-k8s: pip install 'dagster-k8s>=0.29,<0.30'"
        ) from exc
    return k8s_job_executor


def build_definitions() -> dg.Definitions:
    """The defs folder's Definitions with the location-wide settings: what `defs` returns."""
    executor = executor_from_env()  # first: a bad GMAI_EXECUTOR fails before 452 assets are built
    # The catalog before the folder: a bad entry fails with its CatalogError (file and field), not wrapped in
    # the loader's per-module tree; the modules then read the cached copy.
    catalog()
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(executor=executor),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
