"""`normalized/<name>`: one asset per source, downstream of `source/<name>`, thin over `gmai_pipeline.normalize`.

Writes normalized/<name>.parquet, quarantine/<name>.parquet, the images, and previews/<name>.png;
four blocking asset checks re-read what was written. The asset fails only when nothing at all
could be normalized; partial quarantine is reported, not fatal.
"""

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq

from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.defs.common import group_name, layout, md_table
from gmai_pipeline.manifest import MANIFEST_SCHEMA
from gmai_pipeline.normalize import (
    NormalizeReport,
    preview_markdown,
    preview_path,
    render_preview,
    verify_outputs,
)
from gmai_pipeline.settings import get_settings
from gmai_pipeline.storage import atomic_path

CHECKS = {
    "boxes_inside_image": "every bbox lies inside its stored image (null exactly for classification rows)",
    "labels_non_empty": "every row has a non-empty label",
    "modality_department_in_vocabulary": "modality and department are in assets/vocabulary.yaml",
    "inputs_accounted": "inputs seen = inputs kept + inputs quarantined (recounted from the written tables)",
    "labels_plausible": "classification labels are classes, not a collapse, ids, codes or folder names",
}
EXPECT_CHECK = ("expected_counts", "image/case/class counts match the catalog's documented `expect:` counts")


def check_descriptions(source: SourceDataset) -> dict[str, str]:
    """The blocking checks of one dataset: the fixed ones, plus `expected_counts` when it declares `expect:`."""
    return {**CHECKS, **(dict([EXPECT_CHECK]) if source.expect is not None else {})}


def normalized_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["normalized", name])


def _counter_table(counter, key: str) -> dg.MetadataValue:
    df = pd.DataFrame(counter.most_common(), columns=[key, "count"])
    return md_table(df, 50)


def _metadata(report: NormalizeReport, source: SourceDataset) -> dict[str, object]:
    lay = layout()
    meta: dict[str, object] = {
        "dagster/row_count": report.rows,
        "inputs": report.inputs,
        "kept": report.kept,
        "quarantined": report.quarantined,
        "label_distribution": _counter_table(report.labels, "label"),
        "quarantine_by_reason": _counter_table(report.by_reason, "reason") if report.by_reason else "none",
        "ignored_files": len(report.ignored),
        "seconds": round(report.seconds, 2),
        "inputs_per_second": round(report.inputs / report.seconds, 1) if report.seconds else 0.0,
        "table": dg.MetadataValue.path(str(lay.normalized(source.name))),
        "quarantine_table": dg.MetadataValue.path(str(lay.quarantine(source.name))),
    }
    if report.ignored:
        meta["ignored_examples"] = ", ".join(report.ignored[:10])
    if report.counters:
        meta["slicing"] = _counter_table(report.counters, "counter")
    if report.layout_root:
        meta["layout_root"] = report.layout_root
    if report.archives_left:
        meta["archives_not_unpacked"] = ", ".join(report.archives_left[:20])
    if source.expect is not None:
        meta["images_found"], meta["cases_found"] = report.images, report.cases
    return meta


def build_normalized_asset(source: SourceDataset) -> dg.AssetsDefinition:
    key = normalized_key(source.name)

    @dg.asset(
        key=key,
        deps=[dg.AssetKey(["source", source.name])],
        group_name=group_name(source),
        kinds={"parquet"},
        description=(
            f"`{source.title}` read with the `{source.reader.kind}` reader into <image, modality, label, department, bbox> "
            f"rows (normalized/{source.name}.parquet), images under images/{source.dim}/{source.task}/..., rejected inputs "
            f"in quarantine/{source.name}.parquet."
        ),
        tags={"dataset": source.name, "demo": str(source.demo).lower()},
        check_specs=[
            dg.AssetCheckSpec(name, asset=key, description=d, blocking=True)
            for name, d in check_descriptions(source).items()
        ],
    )
    def _normalized(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        from gmai_pipeline.normalize import normalize_source

        settings = get_settings()
        lay = layout()
        manifest_path = lay.manifest(source.name)
        if not manifest_path.exists():
            raise dg.Failure(f"{manifest_path} is missing: materialize source/{source.name} first")
        manifest = pq.read_table(manifest_path, schema=MANIFEST_SCHEMA).to_pylist()

        def progress(r: NormalizeReport) -> None:
            context.log.info(
                f"{source.name}: {r.inputs} inputs ({r.kept} kept, {r.quarantined} quarantined), {r.rows} rows, "
                f"{r.inputs / max(r.seconds, 1e-9):.1f} inputs/s"
            )

        report = normalize_source(
            source, settings.raw_root / source.name, manifest, lay.root, progress=progress
        )
        context.log.info(
            f"{source.name}: done in {report.seconds:.1f}s: {report.inputs} inputs, {report.kept} kept, "
            f"{report.quarantined} quarantined, {report.rows} rows"
        )
        failure = report.failure_message()
        if failure:
            raise dg.Failure(description=failure, metadata={"quarantine_by_reason": dict(report.by_reason)})

        metadata = _metadata(report, source)
        montage = render_preview(lay.root, report.preview)
        if montage is not None:
            target = preview_path(lay, source.name)
            with atomic_path(target) as tmp:
                montage.save(tmp, "PNG", compress_level=1)
            metadata["preview"] = dg.MetadataValue.md(preview_markdown(montage))
            metadata["preview_file"] = dg.MetadataValue.path(str(target))

        checks = verify_outputs(lay.root, source, report)
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name=name, passed=c.passed, metadata=c.metadata, description=c.description
                )
                for name, c in checks.items()
            ],
        )

    return _normalized


def build_defs(sources: list[SourceDataset]) -> dg.Definitions:
    return dg.Definitions(assets=[build_normalized_asset(s) for s in sources])
