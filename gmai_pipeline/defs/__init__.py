"""Dagster definitions, one module per stage of the asset graph; `gmai_pipeline.definitions` merges them."""
