"""`normalized/<name>`: one asset per source, downstream of `source/<name>`, thin over `gmai_pipeline.normalize`.

Writes normalized/<name>.parquet, quarantine/<name>.parquet, the images, and previews/<name>.png; its
one asset check, `in_release`, re-reads what was written and gives the verdict, each property it verified
in its metadata. Partial quarantine is reported, not fatal.

One bad dataset never blocks the others (README, "Partial downloads and failing datasets"): a
dataset that cannot be used (its reader raised, its manifest is missing, nothing could be kept, or a
property of its tables failed) gets a failed `in_release` check and a failure record, and is left out
of `annotations` while the release is built from the rest; annotations' `present_datasets_in_release`
check then fails the run naming it. This step fails itself only when `annotations` is not in the run. The check is
therefore not Dagster-blocking (a failed blocking check fails the step, which would abandon
`annotations` for every dataset): what it blocks is this dataset's rows. Tables that were written are
materialized (they are what was read, and the check judges them); nothing is materialized when no
table could be written.

A dataset with `partitions: N` (`gmai_pipeline.normalize_parts`) gets N part assets
`normalized/<name>/p000..` (one step each, so the executor's workers share them; one part can be
rematerialized alone, and a run re-executed from failure redoes only the part steps that died) and
`normalized/<name>` joins them and runs the check above on the union. The parts are plain assets
rather than one asset's Dagster partitions because a job cannot hold assets of different partitions
definitions, and every job that builds the release already holds generation's shards. A part whose
reader raised records why and, when the join runs after it, is materialized with that failure for the
join to make it the dataset's; run without the join, it fails.
"""

import time
import traceback
from collections.abc import Iterator

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq

from gmai_pipeline.availability import clear_failure, record_failure
from gmai_pipeline.catalog import SourceDataset
from gmai_pipeline.defs.common import catalog, group_name, md_table, release_in_run
from gmai_pipeline.defs.resources import PipelineStorage
from gmai_pipeline.manifest import MANIFEST_SCHEMA
from gmai_pipeline.normalize import (
    CheckOutcome,
    NormalizeReport,
    preview_markdown,
    preview_path,
    render_preview,
    verify_outputs,
)
from gmai_pipeline.normalize_parts import (
    PartsNotReady,
    fingerprint,
    join_parts,
    part_name,
    write_part_failure,
    write_part_report,
)
from gmai_pipeline.storage import OutputLayout, atomic_path

# What `in_release` verifies on the written tables (`gmai_pipeline.normalize.verify_outputs` says how), and
# `expected_counts` where the entry declares `expect:`.
PROPERTIES = (
    "boxes_inside_image",
    "labels_non_empty",
    "modality_department_in_vocabulary",
    "inputs_accounted",
    "labels_plausible",
)
EXPECTED = "expected_counts"

# One check per dataset, the verdict, with every property verified on the written tables in its metadata,
# rather than one check per property: Dagster writes an event for each check of a run when it plans the
# run, and 219 datasets x 7 properties made planning `build_dataset_job` over the full catalog (nearly all
# of it absent on any one machine) cost more than running the demo.
IN_RELEASE = "in_release"
IN_RELEASE_DESCRIPTION = (
    "the verdict on this dataset: it was read, kept at least one input, and the tables written passed every "
    f"property verified on them ({', '.join(PROPERTIES)}, and {EXPECTED} where the catalog declares "
    "`expect:`; each one's outcome is in this check's metadata), so annotations includes it; when it fails, "
    "the reason is here, the dataset is left out and the rest of the release is still built"
)


class DatasetUnusable(Exception):
    """This dataset cannot go into the release; the message says why and what to do."""


def normalized_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["normalized", name])


def part_key(name: str, part: int) -> dg.AssetKey:
    return dg.AssetKey(["normalized", name, part_name(part)])


def _upstream(source: SourceDataset) -> list[dg.AssetKey]:
    if source.partitions > 1:
        return [part_key(source.name, i) for i in range(source.partitions)]
    return [dg.AssetKey(["source", source.name])]


def _counter_table(counter, key: str) -> dg.MetadataValue:
    df = pd.DataFrame(counter.most_common(), columns=[key, "count"])
    return md_table(df, 50)


def _metadata(report: NormalizeReport, source: SourceDataset, lay: OutputLayout) -> dict[str, object]:
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
    if source.partitions > 1:
        meta["partitions"] = source.partitions
    return meta


def build_normalized_asset(source: SourceDataset) -> dg.AssetsDefinition:
    key = normalized_key(source.name)

    @dg.multi_asset(
        name=key.to_python_identifier(),
        specs=[
            dg.AssetSpec(
                key,
                deps=_upstream(source),
                group_name=group_name(source),
                kinds={"parquet"},
                description=(
                    f"`{source.title}` read with the `{source.reader.kind}` reader into <image, modality, label, "
                    f"department, bbox> rows (normalized/{source.name}.parquet), images under "
                    f"images/{source.dim}/{source.task}/..., rejected inputs in quarantine/{source.name}.parquet."
                    + (
                        f" Joined from its {source.partitions} parts normalized/{source.name}/p000...; the checks "
                        "judge the union."
                        if source.partitions > 1
                        else ""
                    )
                ),
                tags={"dataset": source.name, "demo": str(source.demo).lower()},
                skippable=True,  # no table could be written: nothing to materialize
            )
        ],
        # Subsettable so that the check result is an optional output, yielded on its own when the reader raised.
        can_subset=True,
        check_specs=[dg.AssetCheckSpec(IN_RELEASE, asset=key, description=IN_RELEASE_DESCRIPTION)],
    )
    def _normalized(
        context: dg.AssetExecutionContext, storage: PipelineStorage
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        if key not in context.selected_asset_keys:
            raise dg.Failure(
                f"the checks of {key.to_user_string()} run with it: materialize {key.to_user_string()}"
            )
        lay = storage.layout()
        try:
            report = _join(source, lay) if source.partitions > 1 else _normalize(context, source, storage)
        except Exception as exc:  # one dataset's crash must not take the release down
            problem = (
                str(exc)
                if isinstance(exc, DatasetUnusable | PartsNotReady)
                else f"{source.name}: the {source.reader.kind} reader raised {type(exc).__name__}: {exc}"
            )
            if not isinstance(exc, DatasetUnusable | PartsNotReady):
                context.log.error(f"{source.name}: {traceback.format_exc()}")
            yield _in_release(problem)
            _unusable(context, source, problem, lay)
            return

        metadata = _metadata(report, source, lay)
        failure = report.failure_message()
        checks = verify_outputs(lay.root, source, report)
        problem = failure or _failed_properties(source, checks)
        if failure:
            metadata["failure"] = failure
        else:
            montage = render_preview(lay.root, report.preview)
            if montage is not None:
                target = preview_path(lay, source.name)
                with atomic_path(target) as tmp:
                    montage.save(tmp, "PNG", compress_level=1)
                metadata["preview"] = dg.MetadataValue.md(preview_markdown(montage))
                metadata["preview_file"] = dg.MetadataValue.path(str(target))

        yield dg.MaterializeResult(
            asset_key=key,
            metadata=metadata,
            check_results=[
                _in_release(
                    problem,
                    {
                        **_properties_metadata(checks),
                        **({"quarantine_by_reason": dict(report.by_reason)} if problem else {}),
                    },
                )
            ],
        )
        if problem:
            _unusable(context, source, problem, lay)
        else:
            clear_failure(lay, source.name)

    return _normalized


def build_part_asset(source: SourceDataset, part: int) -> dg.AssetsDefinition:
    """One part of a partitioned dataset: its own step. A part that cannot be made records why and, when
    the join (`normalized/<name>`) runs later, leaves the verdict to it (the other parts still run and
    the dataset is left out as one failure); run alone, it fails."""
    key = part_key(source.name, part)

    @dg.asset(
        key=key,
        deps=[dg.AssetKey(["source", source.name])],
        group_name=group_name(source),
        kinds={"parquet"},
        description=(
            f"Part {part + 1} of {source.partitions} of `{source.title}`: the cases whose id hashes to "
            f"{part_name(part)}, read with the `{source.reader.kind}` reader into "
            f"normalized/{source.name}/part-{part:03d}.parquet (and its quarantine part); "
            f"normalized/{source.name} joins the parts."
        ),
        tags={"dataset": source.name, "demo": str(source.demo).lower()},
    )
    def _part(context: dg.AssetExecutionContext, storage: PipelineStorage) -> dg.MaterializeResult:
        lay = storage.layout()
        made_from = None
        cpu = time.process_time()
        try:
            manifest = _manifest(source, lay)
            made_from = fingerprint(source, manifest)
            report = _normalize(context, source, storage, part, manifest)
        except Exception as exc:  # recorded for the join, which leaves the dataset out and says why
            problem = (
                str(exc)
                if isinstance(exc, DatasetUnusable)
                else f"{source.name}: the {source.reader.kind} reader raised {type(exc).__name__}: {exc}"
            )
            context.log.error(f"{key.to_user_string()}: {traceback.format_exc()}")
            write_part_failure(lay, source, part, problem, made_from)
            if normalized_key(source.name) not in context.job_def.asset_layer.selected_asset_keys:
                raise dg.Failure(description=problem) from None  # no join in this run to name it
            return dg.MaterializeResult(metadata={"failure": problem})
        write_part_report(lay, source, part, report, made_from)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": report.rows,
                "inputs": report.inputs,
                "kept": report.kept,
                "quarantined": report.quarantined,
                "seconds": round(report.seconds, 2),
                "cpu_seconds": round(time.process_time() - cpu, 2),  # what this step's worker spent
                "table": dg.MetadataValue.path(str(lay.normalized_part(source.name, part))),
            }
        )

    return _part


def _manifest(source: SourceDataset, lay: OutputLayout) -> list[dict]:
    manifest_path = lay.manifest(source.name)
    if not manifest_path.exists():
        raise DatasetUnusable(f"{manifest_path} is missing: materialize source/{source.name} first")
    return pq.read_table(manifest_path, schema=MANIFEST_SCHEMA).to_pylist()


def _join(source: SourceDataset, lay: OutputLayout) -> NormalizeReport:
    return join_parts(lay, source, fingerprint(source, _manifest(source, lay)))


def _normalize(
    context: dg.AssetExecutionContext,
    source: SourceDataset,
    storage: PipelineStorage,
    part: int | None = None,
    manifest: list[dict] | None = None,
) -> NormalizeReport:
    from gmai_pipeline.normalize import normalize_source

    lay = storage.layout()
    manifest = manifest if manifest is not None else _manifest(source, lay)
    name = source.name if part is None else f"{source.name}/{part_name(part)}"

    def progress(r: NormalizeReport) -> None:
        context.log.info(
            f"{name}: {r.inputs} inputs ({r.kept} kept, {r.quarantined} quarantined), {r.rows} rows, "
            f"{r.inputs / max(r.seconds, 1e-9):.1f} inputs/s"
        )

    report = normalize_source(
        source, storage.raw / source.name, manifest, lay.root, progress=progress, part=part
    )
    context.log.info(
        f"{name}: done in {report.seconds:.1f}s: {report.inputs} inputs, {report.kept} kept, "
        f"{report.quarantined} quarantined, {report.rows} rows"
    )
    return report


def _failed_properties(source: SourceDataset, checks: dict[str, CheckOutcome]) -> str | None:
    failed = {name: c for name, c in checks.items() if not c.passed}
    if not failed:
        return None
    details = "; ".join(
        f"{name} failed ({c.description}): " + ", ".join(f"{k} {v}" for k, v in c.metadata.items())
        for name, c in failed.items()
    )
    return f"{source.name}: {len(failed)} of {len(checks)} properties failed on the written tables: {details}"


def _properties_metadata(checks: dict[str, CheckOutcome]) -> dict[str, object]:
    """Each property's verdict (`<property>`: passed / failed) and its figures (`<property>/<figure>`), and
    all of them as one table."""
    rows = [
        {
            "property": name,
            "verdict": "passed" if c.passed else "FAILED",
            "what": c.description,
            "found": "; ".join(f"{k}: {v}" for k, v in c.metadata.items()),
        }
        for name, c in checks.items()
    ]
    meta: dict[str, object] = {"properties": md_table(pd.DataFrame(rows), len(rows))}
    for name, c in checks.items():
        meta[name] = "passed" if c.passed else "failed"
        meta.update({f"{name}/{k}": v for k, v in c.metadata.items()})
    return meta


def _in_release(problem: str | None, metadata: dict | None = None) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=IN_RELEASE,
        passed=problem is None,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"left out of the release: {problem}" if problem else "included in annotations",
        metadata={**(metadata or {}), **({"reason": problem} if problem else {})},
    )


def _unusable(
    context: dg.AssetExecutionContext, source: SourceDataset, problem: str, lay: OutputLayout
) -> None:
    """Record the failure; fail this step only when no `annotations` step in this run will name it."""
    record_failure(lay, source.name, "normalize", problem)
    if not release_in_run(context):
        raise dg.Failure(description=problem)
    context.log.error(
        f"{source.name}: left out of the release, which goes on without it (annotations' "
        f"present_datasets_in_release check will fail the run): {problem}"
    )


def build_defs(sources: list[SourceDataset]) -> dg.Definitions:
    parts = [build_part_asset(s, i) for s in sources if s.partitions > 1 for i in range(s.partitions)]
    return dg.Definitions(assets=[*(build_normalized_asset(s) for s in sources), *parts])


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs(catalog())
