"""Jobs: named selections over the asset graph.

`demo_job` runs the demo sources end to end in one run; it tags the run with the whole
generation partition range so the partitioned assets process every shard in that run.
"""

from __future__ import annotations

import dagster as dg

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.partitions import SHARD_KEYS

ALL_SHARDS_TAGS = {
    "dagster/asset_partition_range_start": SHARD_KEYS[0],
    "dagster/asset_partition_range_end": SHARD_KEYS[-1],
}


def demo_selection(catalog: list[SourceDataset]) -> dg.AssetSelection:
    demo_sources = dg.AssetSelection.assets(*[["source", s.name] for s in catalog if s.demo])
    return demo_sources.downstream()


def build_jobs(catalog: list[SourceDataset]) -> list[dg.UnresolvedAssetJobDefinition]:
    return [
        dg.define_asset_job(
            "demo_job",
            selection=demo_selection(catalog),
            description="The embedded demo end to end: sources -> normalized -> decontaminated -> generated -> "
            "translated -> shards -> three tiny training stages.",
            tags=ALL_SHARDS_TAGS,
        ),
    ]
