"""Sensors: the new-raw-data sensor, which requests the steps a new or changed dataset folder needs.

Off by default (`default_status=STOPPED`); switch it on in the UI (Automation) once `dagster-daemon` runs
beside the web server (`dagster dev` starts both).
"""

from __future__ import annotations

import hashlib

import dagster as dg

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.defs.common import catalog
from gmai_pipeline.defs.evaluation import gpu_selection
from gmai_pipeline.defs.generation import ALL_SHARDS_TAGS
from gmai_pipeline.defs.normalize import normalized_key
from gmai_pipeline.defs.resources import PipelineStorage
from gmai_pipeline.defs.sources import source_key
from gmai_pipeline.sensing import (
    FolderState,
    changed_folders,
    decode_cursor,
    encode_cursor,
    scan_raw_root,
    uncatalogued_folders,
)
from gmai_pipeline.settings import raw_sensor_interval_s


def _first_seen_is_current(context: dg.SensorEvaluationContext, name: str, state: FolderState) -> bool:
    """A folder the cursor has not seen yet needs no run if `source/<name>` was materialized after its newest file."""
    event = context.instance.get_latest_materialization_event(source_key(name))
    if event is None:
        return False
    return state.newest_mtime is None or event.timestamp >= state.newest_mtime


def selection_for(names: list[str], asset_graph_keys: set[dg.AssetKey]) -> list[dg.AssetKey]:
    """`source/<name>`, `normalized/<name>` and everything downstream of them, training and evaluation excluded."""
    roots = [k for n in names for k in (source_key(n), normalized_key(n)) if k in asset_graph_keys]
    return sorted(roots, key=lambda k: k.to_user_string())  # resolved against the graph by the caller


def build_raw_data_sensor(catalog: list[SourceDataset]) -> dg.SensorDefinition:
    names = [s.name for s in catalog]

    @dg.sensor(
        name="raw_data_sensor",
        minimum_interval_seconds=raw_sensor_interval_s(),
        default_status=dg.DefaultSensorStatus.STOPPED,
        target=dg.AssetSelection.all() - gpu_selection(),
        description="Watches $GMAI_RAW_ROOT: when a catalogued dataset's folder appears or changes (paths, sizes, "
        "mtimes), requests source/<name>, normalized/<name> and everything downstream up to the release "
        "(training and evaluation are left to a person). Folders not in the catalog are reported and ignored.",
    )
    def raw_data_sensor(context: dg.SensorEvaluationContext, storage: PipelineStorage):
        raw_root = storage.raw
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


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[build_raw_data_sensor(catalog())])
