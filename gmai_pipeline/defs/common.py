"""Small helpers shared by the Dagster layers (never imported by domain code)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import dagster as dg
import pandas as pd

from gmai_pipeline.catalog import SourceDataset, load_catalog
from gmai_pipeline.settings import catalog_dirs

ANNOTATIONS = dg.AssetKey("annotations")


def catalog() -> list[SourceDataset]:
    """The catalog the code location is built from, read once per set of folders (`GMAI_CATALOG_DIR`):
    every module in `defs/` asks for it, and parsing 219 YAML files once per module would cost seconds."""
    return list(_catalog(catalog_dirs()))


@functools.cache
def _catalog(dirs: tuple[Path, ...]) -> tuple[SourceDataset, ...]:
    return tuple(load_catalog(dirs))


def group_name(source: SourceDataset) -> str:
    """Dagster group per modality (`sources_ct`, `sources_x_ray`...): the UI's left rail reads as the paper's mix."""
    return "sources_" + re.sub(r"[^a-z0-9]+", "_", source.modality.lower()).strip("_")


def md_table(df: pd.DataFrame, max_rows: int = 20) -> dg.MetadataValue:
    return dg.MetadataValue.md(df.head(max_rows).to_markdown(index=False) if len(df) else "_(empty)_")


def catalog_metadata(source: SourceDataset) -> dict[str, dg.RawMetadataValue]:
    return {
        "title": source.title,
        "url": dg.MetadataValue.url(source.url) if source.url else "unknown",
        "license": source.license,
        "modality": source.modality,
        "department": source.department,
        "task_type": source.task_type,
        "clinical_task": source.clinical_task,
        "reader": source.reader.kind,
        "external_llm_allowed": source.external_llm_allowed,
        "provenance": source.provenance.source,
    }


def release_in_run(context: dg.AssetExecutionContext) -> bool:
    """Whether `annotations` runs later in this run: then a dataset's failure is recorded and left to its
    `present_datasets_in_release` check to name, so the other datasets still reach the release; without
    it, the step that found the failure fails (README, "Partial downloads and failing datasets")."""
    return ANNOTATIONS in context.job_def.asset_layer.selected_asset_keys
