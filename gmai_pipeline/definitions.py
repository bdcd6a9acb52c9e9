"""The code location: every stage's definitions merged, plus the jobs users look for.

Read the asset graph off `gmai_pipeline/defs/`: (catalog report beside it) sources -> normalize -> decontam ->
generation -> release -> training -> evaluation, with ops (schedules, sensors) beside them.
"""

from __future__ import annotations

import dagster as dg

from gmai_pipeline.catalog import load_catalog
from gmai_pipeline.defs import (
    catalog_report,
    decontam,
    evaluation,
    external,
    generation,
    normalize,
    ops,
    release,
    sources,
    training,
)
from gmai_pipeline.jobs import build_jobs


def build_definitions() -> dg.Definitions:
    catalog = load_catalog()
    stages = dg.Definitions.merge(
        *(
            module.build_defs(catalog)
            for module in (
                catalog_report,
                sources,
                normalize,
                decontam,
                generation,
                external,
                release,
                training,
                evaluation,
                ops,
            )
        )
    )
    return dg.Definitions.merge(stages, dg.Definitions(jobs=build_jobs(catalog)))


defs = build_definitions()
