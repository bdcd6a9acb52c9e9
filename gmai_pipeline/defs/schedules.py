"""Schedules: the nightly generation backfill.

Off by default (`default_status=STOPPED`); switch it on in the UI (Automation) once `dagster-daemon` runs
beside the web server (`dagster dev` starts both).
"""

from __future__ import annotations

import dagster as dg

from gmai_pipeline.defs.generation import generate_job
from gmai_pipeline.partitions import SHARD_KEYS
from gmai_pipeline.settings import nightly_cron


def build_nightly_generation_schedule() -> dg.ScheduleDefinition:
    @dg.schedule(
        name="nightly_generation_backfill",
        cron_schedule=nightly_cron(),
        job=generate_job,
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


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(schedules=[build_nightly_generation_schedule()])
