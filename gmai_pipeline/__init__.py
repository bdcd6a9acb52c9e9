"""gmai-pipeline: a Dagster pipeline that rebuilds GMAI-VL-5.5M and trains GMAI-VL-style models.

`dagster job execute -m gmai_pipeline -j demo_job` loads `defs` from here.
"""

from gmai_pipeline.definitions import defs

__all__ = ["defs"]
