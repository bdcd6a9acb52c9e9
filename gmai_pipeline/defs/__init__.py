"""Dagster definitions: each module contributes its own Definitions; `gmai_pipeline.definitions` loads the folder."""
