"""gmai-pipeline: rebuilds GMAI-VL-5.5M and trains GMAI-VL-style models.

Importing the package loads no Dagster: the code location is `gmai_pipeline.definitions` (which loads
`gmai_pipeline/defs/`), so a pure function such as `gmai_pipeline.hashing` imports in milliseconds and does
not fail on a bad `GMAI_EXECUTOR` or `GMAI_PROFILE`.
"""
