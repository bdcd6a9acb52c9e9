"""The dataset release: WebDataset shards, LLaVA/XTuner annotation files, training mixtures, the report.

Plain Python (no dagster); `gmai_pipeline/defs/release.py` is the thin Dagster layer over it.
"""
