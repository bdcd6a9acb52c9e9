"""`catalog_report`: the state of the 219 sources in the UI, thin over `gmai_pipeline.catalog_report`.

Materializing it writes `$GMAI_OUTPUT_ROOT/reports/catalog_report.md` (the same text as
`python -m gmai_pipeline.catalog_report`) and shows the counts, the mix next to the paper's Table 3 and
the entries still without a catalog section as metadata.
"""

import dagster as dg

from gmai_pipeline.defs.common import catalog
from gmai_pipeline.defs.resources import PipelineStorage
from gmai_pipeline.storage import atomic_write_text

GROUP = "catalog"


class CatalogReportConfig(dg.Config):
    fixtures: bool = False  # also build and read every declared fixture (about 10 s)


@dg.asset(
    key="catalog_report",
    group_name=GROUP,
    kinds={"markdown"},
    description="Per catalog entry: verified, reader, licence and where it is stated, external LLM allowed, "
    "documented counts, fixture state; the mix by task, modality, department and clinical task next to the "
    "paper's Table 3. Reads assets/sources/ and the research records in scripts/catalog_research/.",
)
def catalog_report(
    context: dg.AssetExecutionContext, config: CatalogReportConfig, storage: PipelineStorage
) -> dg.MaterializeResult:
    # imported here: `python -m gmai_pipeline.catalog_report` loads the package (and so this module) first
    from gmai_pipeline import catalog_report as cr

    report = cr.build_report(with_fixtures=config.fixtures)
    path = storage.output / "reports" / "catalog_report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, report.markdown())
    failing = [e.name for e in report.entries if "FAILS" in e.fixture]
    if failing:
        context.log.error(
            f"fixtures failing: {', '.join(failing)} (pytest tests/test_catalog_fixtures.py -k <name>)"
        )
    pending = [e for e in report.entries if not e.verified]
    return dg.MaterializeResult(
        metadata={
            **report.summary(),
            "report": dg.MetadataValue.path(str(path)),
            "mix_vs_table3": dg.MetadataValue.md(report.mix_markdown()),
            "not_verified": dg.MetadataValue.md(
                cr.md_table(["entry", "state"], [[e.name, e.state] for e in pending])
                if pending
                else "_(none)_"
            ),
            "fixtures_failing": ", ".join(failing) or "none",
        }
    )


def build_defs(sources) -> dg.Definitions:
    return dg.Definitions(assets=[catalog_report])


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs(catalog())
