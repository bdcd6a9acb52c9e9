"""Snapshot of the code location: every asset spec, job selection, schedule and sensor.

`tests/snapshots/definitions.yaml` is the reviewer's view of the graph: a change to a key, a group, a kind,
a dependency, a partitioning, a check, a job's resolved selection or a schedule's cron shows up in the diff.
Regenerate it after an intended change with

    UPDATE_SNAPSHOTS=1 pytest -p no:cacheprovider -n 0 tests/test_definitions_snapshot.py

and commit the file with the change. The snapshot is taken with the defaults a fresh clone runs with (no
`GMAI_*` variable set), so it does not depend on the shell it runs in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.yaml"
# Variables that change what definition loading builds: unset, the snapshot is of the defaults.
LOAD_TIME_VARIABLES = (
    "GMAI_CATALOG_DIR",
    "GMAI_EXECUTOR",
    "GMAI_PROFILE",
    "GMAI_NIGHTLY_CRON",
    "GMAI_RAW_SENSOR_INTERVAL_S",
)


def _keys(keys) -> list[str]:
    return sorted(k.to_user_string() for k in keys)


def _partitions(pd: dg.PartitionsDefinition | None) -> Any:
    if pd is None:
        return None
    if isinstance(pd, dg.StaticPartitionsDefinition):
        return {"static": pd.get_partition_keys()}
    return {type(pd).__name__: str(pd)}


def _assets(defs: dg.Definitions) -> dict[str, Any]:
    graph = defs.resolve_asset_graph()
    out = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        out[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "deps": _keys(node.parent_keys),
            "partitions": _partitions(node.partitions_def),
            "checks": sorted(c.name for c in node.check_keys),
        }
    return out


def _job(job: dg.JobDefinition) -> dict[str, Any]:
    return {
        "assets": _keys(job.asset_layer.selected_asset_keys),
        "partitions": _partitions(job.partitions_def),
        "tags": dict(sorted(job.tags.items())),
    }


class _Dumper(yaml.SafeDumper):
    """Every value written out in full: no `&id001` anchors for a reader to chase."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def snapshot(defs: dg.Definitions) -> dict[str, Any]:
    repo = defs.get_repository_def()
    jobs = {j.name: _job(j) for j in repo.get_all_jobs() if not j.name.startswith("__")}
    schedules = {
        s.name: {
            "cron": s.cron_schedule,
            "timezone": s.execution_timezone,
            "job": s.job_name,
            "default_status": s.default_status.value,
        }
        for s in repo.schedule_defs
    }
    sensors = {}
    for s in repo.sensor_defs:
        targets = []
        for target in s.targets:
            if target.job_name.startswith("__anonymous_asset_job"):
                targets.append(
                    {"assets": _keys(repo.get_job(target.job_name).asset_layer.selected_asset_keys)}
                )
            else:
                targets.append({"job": target.job_name})
        sensors[s.name] = {
            "minimum_interval_seconds": s.minimum_interval_seconds,
            "default_status": s.default_status.value,
            "targets": targets,
        }
    return {
        "assets": _assets(defs),
        "jobs": dict(sorted(jobs.items())),
        "schedules": dict(sorted(schedules.items())),
        "sensors": dict(sorted(sensors.items())),
    }


def _load(monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    for name in LOAD_TIME_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    from gmai_pipeline.definitions import build_definitions

    return build_definitions()


def test_definitions_match_the_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    actual = snapshot(_load(monkeypatch))
    text = yaml.dump(actual, Dumper=_Dumper, sort_keys=False, width=110)
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.is_file(), f"{SNAPSHOT} missing: run UPDATE_SNAPSHOTS=1 pytest {__file__}"
    expected = yaml.safe_load(SNAPSHOT.read_text())
    for section in ("assets", "jobs", "schedules", "sensors"):
        want, got = expected.get(section, {}), actual[section]
        missing, new = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        changed = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        assert not (missing or new or changed), (
            f"{section} differ from {SNAPSHOT.name}: missing {missing[:10]}, new {new[:10]}, changed "
            f"{changed[:10]} (first changed: {changed and {changed[0]: (want[changed[0]], got[changed[0]])}}); "
            "if intended, run UPDATE_SNAPSHOTS=1 pytest tests/test_definitions_snapshot.py"
        )
