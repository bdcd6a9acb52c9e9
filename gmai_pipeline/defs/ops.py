"""Schedules and sensors: the nightly generation backfill and the new-raw-data sensor.

Both are off by default (`default_status=STOPPED`); switch them on in the UI (Automation) once
`dagster-daemon` runs beside the web server (`dagster dev` starts both).
"""

from __future__ import annotations

import hashlib
import os

import dagster as dg

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.jobs import ALL_SHARDS_TAGS, gpu_selection
from gmai_pipeline.partitions import SHARD_KEYS
from gmai_pipeline.sensing import (
    FolderState,
    changed_folders,
    decode_cursor,
    encode_cursor,
    scan_raw_root,
    uncatalogued_folders,
)
from gmai_pipeline.settings import get_settings

NIGHTLY_CRON = os.environ.get("GMAI_NIGHTLY_CRON", "0 2 * * *")
SENSOR_INTERVAL_S = int(os.environ.get("GMAI_RAW_SENSOR_INTERVAL_S", "300"))


def build_nightly_generation_schedule() -> dg.ScheduleDefinition:
    @dg.schedule(
        name="nightly_generation_backfill",
        cron_schedule=NIGHTLY_CRON,
        job_name="generate_job",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Every night, one generate_job run per generation shard. Shards whose inputs did not change "
        "cost nothing: every request hits the content-addressed response cache.",
    )
    def nightly_generation_backfill(context: dg.ScheduleEvaluationContext):
        day = context.scheduled_execution_time.strftime("%Y-%m-%d")
        for key in SHARD_KEYS:
            yield dg.RunRequest(
                run_key=f"{day}-{key}",
                partition_key=key,
                tags={"gmai/trigger": "nightly_generation_backfill", "gmai/night": day},
            )

    return nightly_generation_backfill


def _first_seen_is_current(context: dg.SensorEvaluationContext, name: str, state: FolderState) -> bool:
    """A folder the cursor has not seen yet needs no run if `source/<name>` was materialized after its newest file."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(["source", name]))
    if event is None:
        return False
    return state.newest_mtime is None or event.timestamp >= state.newest_mtime


def selection_for(names: list[str], asset_graph_keys: set[dg.AssetKey]) -> list[dg.AssetKey]:
    """`source/<name>`, `normalized/<name>` and everything downstream of them, training and evaluation excluded."""
    roots = [
        k
        for n in names
        for k in (dg.AssetKey(["source", n]), dg.AssetKey(["normalized", n]))
        if k in asset_graph_keys
    ]
    return sorted(roots, key=lambda k: k.to_user_string())  # resolved against the graph by the caller


def build_raw_data_sensor(catalog: list[SourceDataset]) -> dg.SensorDefinition:
    names = [s.name for s in catalog]

    @dg.sensor(
        name="raw_data_sensor",
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.STOPPED,
        target=dg.AssetSelection.all() - gpu_selection(),
        description="Watches $GMAI_RAW_ROOT: when a catalogued dataset's folder appears or changes (paths, sizes, "
        "mtimes), requests source/<name>, normalized/<name> and everything downstream up to the release "
        "(training and evaluation are left to a person). Folders not in the catalog are reported and ignored.",
    )
    def raw_data_sensor(context: dg.SensorEvaluationContext):
        raw_root = get_settings().raw_root
        previous = decode_cursor(context.cursor)
        current = scan_raw_root(raw_root, names)
        stray = uncatalogued_folders(raw_root, names)
        if stray:
            context.log.info(f"ignoring folders not in the catalog: {', '.join(stray[:20])}")
        to_run = [
            n
            for n in changed_folders(previous, current)
            if n in previous or not _first_seen_is_current(context, n, current[n])
        ]
        cursor = encode_cursor(current)
        if not to_run:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(f"no new or changed dataset folder under {raw_root}"), cursor=cursor
            )
        asset_graph = context.repository_def.asset_graph
        roots = selection_for(to_run, set(asset_graph.get_all_asset_keys()))
        selected = (dg.AssetSelection.assets(*roots).downstream() - gpu_selection()).resolve(asset_graph)
        digest = hashlib.sha256("".join(f"{n}={current[n].digest};" for n in to_run).encode()).hexdigest()[
            :16
        ]
        context.log.info(
            "new or changed: "
            + ", ".join(f"{n} ({current[n].files} files, {current[n].bytes:,} bytes)" for n in to_run)
            + f" -> {len(selected)} assets"
        )
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"raw-{digest}",
                    asset_selection=sorted(selected, key=lambda k: k.to_user_string()),
                    tags={
                        **ALL_SHARDS_TAGS,
                        "gmai/trigger": "raw_data_sensor",
                        "gmai/datasets": ",".join(to_run)[:1000],
                    },
                )
            ],
            cursor=cursor,
        )

    return raw_data_sensor


def build_defs(sources: list[SourceDataset]) -> dg.Definitions:
    return dg.Definitions(
        schedules=[build_nightly_generation_schedule()],
        sensors=[build_raw_data_sensor(sources)],
    )
