"""The embedded demo's jobs: `demo_job` (end to end) and `demo_ingest_job` (its per-dataset steps only).

They are the only jobs that depend on the catalog (which entries are `demo: true`), so they are built from it.
"""

from __future__ import annotations

import dagster as dg

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.defs.common import catalog, group_name
from gmai_pipeline.defs.evaluation import ABLATION_GROUP
from gmai_pipeline.defs.generation import ALL_SHARDS_TAGS
from gmai_pipeline.defs.normalize import normalized_key
from gmai_pipeline.defs.sources import source_key


def per_dataset_selection(sources: list[SourceDataset]) -> dg.AssetSelection:
    """Every dataset's `source/*` and `normalized/*`: the per-modality groups."""
    return dg.AssetSelection.groups(*sorted({group_name(s) for s in sources}))


def demo_selection(sources: list[SourceDataset]) -> dg.AssetSelection:
    """The demo sources, everything downstream, and the shared inputs that needs (e.g. `benchmark_hashes`),
    but no other dataset's `source/*` or `normalized/*`, and not the ablation (`ablation_job`)."""
    demo_sources = dg.AssetSelection.assets(*[source_key(s.name) for s in sources if s.demo])
    downstream = demo_sources.downstream() - dg.AssetSelection.groups(ABLATION_GROUP)
    return downstream | (downstream.upstream() - per_dataset_selection(sources))


def demo_ingest_selection(sources: list[SourceDataset]) -> dg.AssetSelection:
    demo = [s.name for s in sources if s.demo]
    return dg.AssetSelection.assets(*[source_key(n) for n in demo], *[normalized_key(n) for n in demo])


def build_jobs(sources: list[SourceDataset]) -> list[dg.UnresolvedAssetJobDefinition]:
    return [
        dg.define_asset_job(
            "demo_job",
            selection=demo_selection(sources),
            description="The embedded demo end to end: sources -> normalized -> decontaminated -> generated -> "
            "translated -> shards -> three tiny training stages.",
            tags=ALL_SHARDS_TAGS,
        ),
        dg.define_asset_job(
            "demo_ingest_job",
            selection=demo_ingest_selection(sources),
            description="The demo's per-dataset steps only (source/* and normalized/*): a quick check of an "
            "instance or an executor (the Postgres and Celery tests run it).",
        ),
    ]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=build_jobs(catalog()))
