"""The code location: every module in `gmai_pipeline/defs/` contributes its own Definitions, merged here.

Read the asset graph off `gmai_pipeline/defs/`: (catalog report beside it) sources -> normalize -> decontam ->
generation -> release -> training -> evaluation, with the demo's jobs, the schedules and the sensors beside
them. Each job lives beside the assets it selects. What is set once for the whole location is set here: the
executor, from `GMAI_EXECUTOR`:

- unset / `multiprocess`: Dagster's multiprocess executor, one process per step on this machine, each forked
  from a server that built the location once (`multiprocess_executor`);
- `in_process`: every step in the run's process;
- `celery`: dagster-celery; broker and result backend from `GMAI_CELERY_BROKER_URL` /
  `GMAI_CELERY_BACKEND_URL`, workers started with `deploy/celery.yaml`;
- `k8s`: dagster-k8s, one Kubernetes Job per step (`pip install dagster-k8s`).

`dagster job execute -m gmai_pipeline.definitions -j demo_job`, `dg check defs` and `dg dev` load `defs`.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import dagster as dg

from gmai_pipeline.defs.common import catalog

EXECUTORS = ("multiprocess", "in_process", "celery", "k8s")


def executor_from_env() -> dg.ExecutorDefinition | None:
    """The executor named by `GMAI_EXECUTOR` (None: Dagster's default)."""
    kind = os.environ.get("GMAI_EXECUTOR", "multiprocess").strip() or "multiprocess"
    if kind not in EXECUTORS:
        raise ValueError(f"GMAI_EXECUTOR={kind!r} is not one of {', '.join(EXECUTORS)}")
    if kind == "multiprocess":
        return multiprocess_executor()
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


PRELOAD_MODULE = "gmai_pipeline.step_preload"


def multiprocess_executor() -> dg.ExecutorDefinition | None:
    """Dagster's multiprocess executor, its step processes forked from a server that built the location once.

    With the default `spawn`, every step process imports Dagster and rebuilds all 452 assets and the job
    before its step starts (about 2.5 s of CPU each with the full catalog, 1 s with the demo's); forked from
    a `forkserver` that preloaded `gmai_pipeline.step_preload`, a step process starts with all of that in
    memory. Run config can still set `max_concurrent`, `tag_concurrency_limits`, `retries` or another
    `start_method`. None where the platform has no forkserver (Windows): Dagster's default.

    Python keeps one forkserver per process: every run that `dagster job execute`, `dg dev` or the daemon
    starts is a process of its own, but runs started one after another from one long-lived interpreter
    (a notebook calling `execute_job` twice) share the first run's server, its environment and the
    location it built; give those `start_method: {spawn: {}}`.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None

    @dg.configured(dg.multiprocess_executor, config_schema=dg.Permissive(), name="multiprocess")
    def _preloading(config: dict) -> dict:
        return {"start_method": {"forkserver": {"preload_modules": [PRELOAD_MODULE]}}, **config}

    return _preloading


_prebuilt: dg.Definitions | None = None


def prebuild() -> None:
    """Build the location and resolve every job now, for the processes forked from this one to inherit.

    Only the executor's forkserver calls this (through `gmai_pipeline.step_preload`): it serves the run
    whose process started it, under that run's environment, so what it built is what each step process
    would have built again."""
    global _prebuilt
    built = build_definitions()
    built.get_repository_def().get_all_jobs()
    _prebuilt = built


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
    return _prebuilt if _prebuilt is not None else build_definitions()
