"""Placeholder until this stage lands."""

from __future__ import annotations

import dagster as dg

from gmai_pipeline.catalog import SourceDataset


def build_defs(sources: list[SourceDataset]) -> dg.Definitions:
    return dg.Definitions()
